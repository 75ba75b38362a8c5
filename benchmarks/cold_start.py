"""A freshly started server's first requests against its later ones: time to first token of
requests sent one at a time, from the moment the server reports ready.

Starts `tokenmill serve` (this tree's, or the tree on PYTHONPATH) with the given engine options,
or measures a server already starting at --url (as `make serve` runs it), waits until /health
answers, then sends --requests chat requests of the offline workload one after another, each
streamed, and reports every request's TTFT with the first against the tenth and p99 against p50.
Every prompt has the same length (--input-len tokens) and its own text, so TTFTs differ only by
what the server does, not by the prompt.

    python benchmarks/cold_start.py [--requests 16] [--input-len 300] [--engine-args '--dtype float32 --quantization none']
    python benchmarks/cold_start.py --url http://127.0.0.1:8000      # a server started elsewhere
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import time

import openai

from tokenmill.bench.chat_workloads import WorkloadSpec, build_workload
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import markdown_table
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME, default_model_path
from tokenmill.model.tokenizer import load_tokenizer


def ttft(client: openai.OpenAI, messages: list[dict], max_tokens: int) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=300, help="prompt tokens of every request")
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--engine-args", default="", help="options for the server this script starts")
    parser.add_argument("--url", default=None, help="measure a server started elsewhere instead")
    args = parser.parse_args()
    server = None if args.url else LocalServer.launch(shlex.split(args.engine_args))
    url = args.url or server.url
    try:
        ready_s = server.wait_ready() if server is not None else 0.0
        tokenizer = load_tokenizer(default_model_path())
        spec = WorkloadSpec("chat", args.requests, input_len=(args.input_len, args.input_len))
        workload = build_workload(spec, tokenizer)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("TOKENMILL_API_KEY", "unused"),
                               max_retries=0)
        times = [ttft(client, request.messages, args.output_len) for request in workload]
    finally:
        if server is not None:
            server.stop()
    ms = [1000 * t for t in times]
    p50 = statistics.median(ms)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98]
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"server {'at ' + url if args.url else 'started with ' + repr(args.engine_args)}; ready after "
          f"{ready_s:.1f} s (0: started elsewhere); {args.requests} chat requests one at a time, {args.input_len} prompt tokens, "
          f"{args.output_len} output tokens")
    print("TTFT ms, in order: " + ", ".join(f"{x:.0f}" for x in ms))
    rows = [["first request TTFT (ms)", f"{ms[0]:.0f}"], ["tenth request TTFT (ms)", f"{ms[9]:.0f}"],
            ["first / tenth", f"{ms[0] / ms[9]:.2f}"], ["TTFT p50 (ms)", f"{p50:.0f}"], ["TTFT p99 (ms)", f"{p99:.0f}"],
            ["p99 / p50", f"{p99 / p50:.2f}"]]
    print("\n".join(markdown_table(["figure", "value"], rows, ["---", "---:"])))


if __name__ == "__main__":
    main()
