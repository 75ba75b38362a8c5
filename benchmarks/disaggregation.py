"""Inter-token latency of decode requests while long prompts arrive, with and without
prefill/decode disaggregation, on the same cores.

- colocated: one `tokenmill serve` on every core; long prompts' prefill chunks share steps with
  the decoding requests, so those steps take longer.
- disaggregated: a `--kv-role prefill` instance pinned to core 0 and a `--kv-role decode`
  instance pinned to core 1 (one thread each), behind `tokenmill disagg-proxy`; the decode
  instance never computes a long prompt, only pulls its KV.

A round: `--decoders` streamed chat requests decode `--decode-tokens` tokens each (EOS ignored)
while `--long-prompts` prompts of about `--long-len` tokens arrive `--interval` seconds apart
(each wants 4 tokens). Figures: the gaps between the decoding requests' tokens (ITL p50, p90,
p99, max), their time per output token, and the long prompts' time to first token; medians over
rounds. Default mode (the engine's own choice of dtype and quantization), prefix caching off.

    PYTHONPATH=. python benchmarks/disaggregation.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME

ENGINE_ARGS = ["--no-enable-prefix-caching", "--kv-cache-memory", str(512 * 2**20)]
PARAGRAPH = ("The history of measurement is a history of agreements: merchants, builders and astronomers each "
             "needed units that others would accept, and the standards they settled on shaped trade and science. ")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decoders", type=int, default=4)
    parser.add_argument("--decode-tokens", type=int, default=160)
    parser.add_argument("--long-prompts", type=int, default=4)
    parser.add_argument("--long-len", type=int, default=1500, help="about this many tokens each")
    parser.add_argument("--interval", type=float, default=2.0)
    return parser.parse_args()


async def decode_stream(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> list[float]:
    body = {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": f"Tell story number {i}."}],
            "max_tokens": tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    times = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if any(c.get("delta", {}).get("content") for c in json.loads(line[6:]).get("choices", [])):
                    times.append(time.perf_counter())
    return times


async def long_prompt(client: httpx.AsyncClient, url: str, i: int, length: int) -> float:
    text = f"Document {i}. " + PARAGRAPH * (length // 40)
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json={
        "model": DEFAULT_MODEL_NAME, "prompt": text + "\nSummary:", "max_tokens": 4, "temperature": 0})
    response.raise_for_status()
    return time.perf_counter() - start


async def one_round(url: str, args: argparse.Namespace, seed: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        decoders = [asyncio.create_task(decode_stream(client, url, seed * 100 + i, args.decode_tokens))
                    for i in range(args.decoders)]  # fmt: skip
        await asyncio.sleep(1.0)  # the decoders are decoding
        longs = []
        for i in range(args.long_prompts):
            longs.append(asyncio.create_task(long_prompt(client, url, seed * 100 + i, args.long_len)))
            await asyncio.sleep(args.interval)
        streams, long_s = await asyncio.gather(*decoders), await asyncio.gather(*longs)
    gaps = sorted(b - a for times in streams for a, b in zip(times[1:], times[2:]))  # after the first token
    tpot = [(t[-1] - t[0]) / (len(t) - 1) for t in streams]

    def pct(p: float) -> float:
        return 1e3 * gaps[min(len(gaps) - 1, int(p * len(gaps)))]

    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": 1e3 * gaps[-1],
            "tpot": 1e3 * statistics.mean(tpot), "long": statistics.mean(long_s)}


def launch(args: list[str], log: Path, core: int | None = None) -> LocalServer:
    """A server; with core, pinned to that core (it and its engine core process) with one thread."""
    prefix, env = (["taskset", "-c", str(core)], {**os.environ, "OMP_NUM_THREADS": "1"}) if core is not None else ([], None)
    port = free_port()
    command = [*prefix, sys.executable, "-m", "tokenmill", "serve", "--port", str(port), *ENGINE_ARGS, *args]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    return LocalServer(f"http://127.0.0.1:{port}", process, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(name: str, args: argparse.Namespace, logs: Path) -> list[dict[str, float]]:
    servers: list[LocalServer] = []
    proxy = None
    try:
        if name == "colocated":
            servers = [launch([], logs / "colocated.log")]
            url = servers[0].url
        else:
            peer = ["--kv-peer", f"127.0.0.1:{free_port()}"]
            servers = [launch(["--kv-role", "prefill", *peer], logs / "prefill.log", core=0),
                       launch(["--kv-role", "decode", *peer], logs / "decode.log", core=1)]
            port = free_port()
            proxy = subprocess.Popen([sys.executable, "-m", "tokenmill", "disagg-proxy", "--prefill", servers[0].url,
                                      "--decode", servers[1].url, "--port", str(port)],
                                     stdout=(logs / "proxy.log").open("w"), stderr=subprocess.STDOUT)  # fmt: skip
            url = f"http://127.0.0.1:{port}"
        for server in servers:
            server.wait_ready()
        LocalServer(url, proxy or servers[0].process, None).wait_ready()
        asyncio.run(one_round(url, args, seed=99))  # warm-up
        return [asyncio.run(one_round(url, args, seed=r)) for r in range(args.rounds)]
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(30)
        for server in servers:
            server.stop()


def main() -> None:
    args = parse_args()
    logs = Path(tempfile.mkdtemp(prefix="tokenmill-disaggregation-"))  # the servers' logs, if one fails
    load_before = os.getloadavg()[0]
    results = {name: measure(name, args, logs) for name in ("colocated", "disaggregated")}
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"SmolLM2-135M-Instruct, default mode; {args.decoders} requests decoding {args.decode_tokens} tokens while "
          f"{args.long_prompts} prompts of ~{args.long_len} tokens arrive {args.interval:g} s apart")
    rows, every = [], {}
    for name, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        every[f"{name} ITL p99 ms"] = [run["p99"] for run in runs]
        rows.append([name, *(f"{median[k]:.1f}" for k in ("p50", "p90", "p99", "max", "tpot")), f"{median['long']:.2f}"])
    print_figures(["setup", "ITL p50 (ms)", "ITL p90 (ms)", "ITL p99 (ms)", "ITL max (ms)", "TPOT (ms)",
                   "long prompt, 4 tokens (s)"], rows, every, [load_average_note(load_before)])  # fmt: skip


if __name__ == "__main__":
    main()
