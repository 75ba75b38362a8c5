"""Soak: `tokenmill serve` under mixed load for --minutes, then checked for anything it leaked.

Eight closed-loop clients (seeded) draw each request from the bench workloads:
- shared-prefix chat, greedy, through the prefix cache: the answer must be the one the server
  gave to the same request alone before the load began;
- chat of 50-1,000 tokens, sampled, n of 1 to 3;
- repetitive code edits, which the server's n-gram speculation accelerates;
- JSON under a response schema, the answer validated with jsonschema;
each streamed or not at random, and a fifth of all requests abandoned at a random moment
(before or during the answer). Every 10 s it records the resident memory and open descriptors of
the HTTP front and the engine core, the KV cache in use and the requests in flight.

At the end the server is idle and must hold no KV block; every request not abandoned must have
completed (none failed) and every greedy one must match; descriptors must be back to their count
before the load; resident memory at the end must stay within 10% + 64 MiB of after warm-up (the
first five minutes of load).
The server runs in float32 with the weights unquantized, where a greedy answer does not depend on
what it is batched with (tests/engine/test_batch_invariance.py), so the check can be exact.

    PYTHONPATH=. python benchmarks/soak.py [--minutes 30] [--clients 8] [--seed 0] [--out soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import jsonschema
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tokenmill.bench.chat_workloads import ChatRequest, WorkloadSpec, build_workload
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import markdown_table
from tokenmill.bench.stats import percentile
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME, default_model_path
from tokenmill.model.tokenizer import load_tokenizer

API_KEY = "soak"
SAMPLE_EVERY_S = 10.0
WINDOW_S = 300.0  # the table's rows: five minutes each
WARM_UP_S = 300.0
ABANDON_RATE = 0.2
RSS_BOUND = (1.10, 64 << 20)  # after the load <= after warm-up x 1.10 + 64 MiB
SERVER_ARGS = ["--dtype", "float32", "--quantization", "none", "--kv-cache-memory", str(512 << 20),
               "--speculative-config", json.dumps({"method": "ngram", "num_speculative_tokens": 4}),
               "--api-key", API_KEY, "--max-queued-requests", "64"]  # fmt: skip


@dataclass
class Outcome:
    kind: str
    start: float  # seconds since the load began
    end: float
    status: str  # "ok", "abandoned", "failed: ...", "wrong: ..."
    ttft: float | None = None


@dataclass
class Sample:
    at: float
    front_rss: int
    core_rss: int
    front_fds: int
    core_fds: int
    kv_usage: float
    running: float


@dataclass
class Soak:
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write every outcome and sample here (JSON)")
    return parser.parse_args()


def workloads(seed: int) -> dict[str, list[ChatRequest]]:
    tokenizer = load_tokenizer(default_model_path())
    sizes = {"shared-prefix": ((300, 600), (16, 48)), "chat": ((50, 1000), (16, 128)),
             "repetitive": ((100, 600), (32, 160)), "json": ((100, 400), (400, 400))}  # fmt: skip
    return {name: build_workload(WorkloadSpec(name, 24, inp, out, seed), tokenizer)
            for name, (inp, out) in sizes.items()}  # fmt: skip


def body(request: ChatRequest, kind: str, rng: random.Random, stream: bool) -> dict:
    payload: dict = {"model": DEFAULT_MODEL_NAME, "messages": request.messages, "max_tokens": request.output_len,
                     "stream": stream}  # fmt: skip
    if kind == "shared-prefix":
        payload["temperature"] = 0.0
    else:
        payload.update(temperature=0.8, seed=rng.randrange(2**31))
    if kind == "chat":
        payload["n"] = rng.choice((1, 1, 2, 3))
    if request.response_format is not None:
        payload["response_format"] = request.response_format
    return payload


@dataclass
class Answer:
    texts: list[str]  # each choice's
    finish_reasons: list[str | None]
    ttft: float | None  # streamed: seconds to the first content


async def send(client: httpx.AsyncClient, payload: dict) -> Answer:
    """The answer; raises on anything but a 200 and on an error event."""
    start = time.monotonic()
    if not payload["stream"]:
        response = await client.post("/v1/chat/completions", json=payload)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {response.text[:200]}")
        choices = response.json()["choices"]
        return Answer([c["message"]["content"] or "" for c in choices], [c["finish_reason"] for c in choices], None)
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    ttft = None
    async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code} {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            for choice in chunk["choices"]:
                content = choice["delta"].get("content") or ""
                if content and ttft is None:
                    ttft = time.monotonic() - start
                texts[choice["index"]] = texts.get(choice["index"], "") + content
                reasons[choice["index"]] = choice["finish_reason"] or reasons.get(choice["index"])
    return Answer([texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(texts)], ttft)


def check(kind: str, request: ChatRequest, answer: Answer, expected: dict[str, str], payload: dict) -> str:
    texts = answer.texts
    if len(texts) != payload.get("n", 1) or None in answer.finish_reasons:
        return f"wrong: {len(texts)} choices for n={payload.get('n', 1)}, finish reasons {answer.finish_reasons}"
    if kind == "shared-prefix" and texts[0] != expected[json.dumps(request.messages)]:
        return "wrong: a greedy answer differs from the one given alone"
    if request.response_format is not None and answer.finish_reasons[0] == "stop":  # not cut off by max_tokens
        try:
            jsonschema.validate(json.loads(texts[0]), request.response_format["json_schema"]["schema"])
        except (ValueError, jsonschema.ValidationError) as exc:
            return f"wrong: the answer does not follow its schema ({type(exc).__name__})"
    return "ok"


async def client_loop(url: str, pools: dict[str, list[ChatRequest]], expected: dict[str, str], seed: int,
                      start: float, stop_at: float, soak: Soak) -> None:  # fmt: skip
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        while time.monotonic() < stop_at:
            kind = rng.choice(list(pools))
            request = rng.choice(pools[kind])
            payload = body(request, kind, rng, stream=rng.random() < 0.5)
            began = time.monotonic()
            task = asyncio.ensure_future(send(client, payload))
            abandon_after = rng.uniform(0.05, 4.0) if rng.random() < ABANDON_RATE else None
            done, _ = await asyncio.wait({task}, timeout=abandon_after)
            ttft = None
            if not done:  # the client goes away: its connection closes under the request
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                status = "abandoned"
            elif task.exception() is not None:
                status = f"failed: {task.exception()}"
            else:
                answer = task.result()
                ttft, status = answer.ttft, check(kind, request, answer, expected, payload)
            soak.outcomes.append(Outcome(kind, began - start, time.monotonic() - start, status, ttft))


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def sample(url: str, front: psutil.Process, core: psutil.Process, at: float) -> Sample:
    found = metrics(url)
    return Sample(at, front.memory_info().rss, core.memory_info().rss, front.num_fds(), core.num_fds(),
                  found.get("tokenmill:kv_cache_usage_perc", 0.0), found.get("tokenmill:num_requests_running", 0.0))


async def sampler(url: str, front: psutil.Process, core: psutil.Process, start: float, stop_at: float,
                  soak: Soak) -> None:  # fmt: skip
    while time.monotonic() < stop_at:
        soak.samples.append(await asyncio.to_thread(sample, url, front, core, time.monotonic() - start))
        await asyncio.sleep(SAMPLE_EVERY_S)


def alone_answers(url: str, requests: list[ChatRequest]) -> dict[str, str]:
    """The greedy requests' answers with nothing else in flight: the reference under load."""
    answers = {}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for request in requests:
        payload = {"model": DEFAULT_MODEL_NAME, "messages": request.messages, "max_tokens": request.output_len,
                   "temperature": 0.0}  # fmt: skip
        response = httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=600)
        answers[json.dumps(request.messages)] = response.json()["choices"][0]["message"]["content"]
    return answers


def wait_idle(url: str, timeout_s: float = 120.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = metrics(url)
        if all(found.get(f"tokenmill:{n}", 0) == 0 for n in ("num_requests_running", "num_requests_waiting")):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def window_rows(soak: Soak) -> list[list[str]]:
    rows = []
    end = max(o.end for o in soak.outcomes)
    for w in range(int(end // WINDOW_S) + 1):
        inside = [o for o in soak.outcomes if w * WINDOW_S <= o.end < (w + 1) * WINDOW_S]
        served = [o for o in inside if o.status == "ok"]
        ttfts = [o.ttft for o in served if o.ttft is not None]
        e2e = [o.end - o.start for o in served]
        samples = [s for s in soak.samples if w * WINDOW_S <= s.at < (w + 1) * WINDOW_S] or soak.samples[-1:]
        rows.append([f"{w * 5}-{w * 5 + 5} min", str(len(served)), str(sum(o.status == "abandoned" for o in inside)),
                     str(sum(o.status.startswith(("failed", "wrong")) for o in inside)),
                     f"{percentile(ttfts, 50):.2f}" if ttfts else "-", f"{percentile(ttfts, 99):.2f}" if ttfts else "-",
                     f"{percentile(e2e, 99):.2f}" if e2e else "-",
                     f"{samples[-1].front_rss / 2**20:.0f} / {samples[-1].core_rss / 2**20:.0f}",
                     f"{max(s.kv_usage for s in samples) * 100:.0f}%"])  # fmt: skip
    return rows


def main() -> None:
    args = parse_args()
    pools = workloads(args.seed)
    log = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    server = LocalServer.launch(SERVER_ARGS, log)
    server.wait_ready()
    front = psutil.Process(server.process.pid)
    core = next(c for c in front.children() if "spawn_main" in " ".join(c.cmdline()))
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"SmolLM2-135M-Instruct; `tokenmill serve {' '.join(SERVER_ARGS)}`; {args.clients} clients, "
          f"{args.minutes:g} minutes, seed {args.seed}; server log {log}", flush=True)  # fmt: skip
    try:
        first = sample(server.url, front, core, 0.0)  # ready: the model loaded, the step warmed up
        expected = alone_answers(server.url, pools["shared-prefix"])
        soak = Soak()
        start = time.monotonic()
        stop_at = start + args.minutes * 60

        async def run() -> None:
            loops = [client_loop(server.url, pools, expected, args.seed * 1000 + i, start, stop_at, soak)
                     for i in range(args.clients)]  # fmt: skip
            await asyncio.gather(sampler(server.url, front, core, start, stop_at, soak), *loops)

        asyncio.run(run())
        idle = wait_idle(server.url)
        time.sleep(1.0)  # the descriptors of the last connections close
        end = sample(server.url, front, core, time.monotonic() - start)
    finally:
        server.stop()
    # Warmed up: the first five minutes of load (half a shorter run) have grown every cache and pool.
    warm = next(s for s in soak.samples if s.at >= min(WARM_UP_S, args.minutes * 30) or s is soak.samples[-1])
    report(args, soak, first, warm, end, idle)


def report(args: argparse.Namespace, soak: Soak, first: Sample, warm: Sample, end: Sample,
           idle: dict[str, float]) -> None:  # fmt: skip
    header = ["window", "served", "abandoned", "failed", "TTFT p50 s", "TTFT p99 s", "e2e p99 s",
              "RSS front / core MiB", "KV peak"]  # fmt: skip
    print("\n".join(markdown_table(header, window_rows(soak))))
    failed = [o for o in soak.outcomes if o.status.startswith(("failed", "wrong"))]
    served = sum(o.status == "ok" for o in soak.outcomes)
    abandoned = sum(o.status == "abandoned" for o in soak.outcomes)
    peak = max(soak.samples, key=lambda s: s.front_rss + s.core_rss)
    rss_ok = all(getattr(end, name) <= getattr(warm, name) * RSS_BOUND[0] + RSS_BOUND[1]
                 for name in ("front_rss", "core_rss"))  # fmt: skip
    checks = {
        "no request failed or answered wrong": not failed,
        "no KV block held at the end": idle.get("tokenmill:kv_cache_usage_perc", 1.0) == 0.0,
        "descriptors back to their count before the load": end.front_fds <= first.front_fds
                                                           and end.core_fds <= first.core_fds,
        "resident memory within 10% + 64 MiB of after warm-up": rss_ok,
    }
    print(f"\nrequests: {served} served, {abandoned} abandoned, {len(failed)} failed or wrong; "
          f"{idle.get('tokenmill:num_preemptions_total', 0):.0f} preemptions")
    print(f"RSS front / core, MiB: at start {first.front_rss / 2**20:.0f} / {first.core_rss / 2**20:.0f}, "
          f"after warm-up {warm.front_rss / 2**20:.0f} / {warm.core_rss / 2**20:.0f}, "
          f"peak {peak.front_rss / 2**20:.0f} / {peak.core_rss / 2**20:.0f}, "
          f"end {end.front_rss / 2**20:.0f} / {end.core_rss / 2**20:.0f}")
    print(f"open descriptors front / core: before the load {first.front_fds} / {first.core_fds}, "
          f"end {end.front_fds} / {end.core_fds}")
    for outcome in failed[:10]:
        print(f"  {outcome.kind} at {outcome.start:.0f} s: {outcome.status}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {name}")
    if args.out is not None:
        args.out.write_text(json.dumps({"outcomes": [asdict(o) for o in soak.outcomes],
                                        "samples": [asdict(s) for s in soak.samples],
                                        "start": asdict(first), "warm": asdict(warm), "end": asdict(end)}))  # fmt: skip
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
