"""`tokenmill bench` as a user runs it: against a live server, offline, and comparing two runs."""

import json
import subprocess
import sys
from pathlib import Path

from tests.live_server import API_KEY, start_server

SMALL = ["--workload", "chat", "--num-requests", "6", "--input-len", "20:60", "--output-len", "8"]


def bench(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "tokenmill", "bench", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def counted(server) -> dict[str, float]:
    return {name: server.metric(f"tokenmill:{name}") for name in
            ("request_success_total", "prompt_tokens_total", "generation_tokens_total")}


def test_serve_counts_equal_the_servers_own_metrics(server, tmp_path):
    server.wait_idle()
    before = counted(server)
    out = bench("serve", "--base-url", server.url, "--api-key", API_KEY, "--concurrency", "1,3", *SMALL,
                "--slo", "ttft=30,itl=5", "--out", str(tmp_path / "run.json"), "--plot", str(tmp_path / "plots"))
    server.wait_idle()
    after = counted(server)
    run = json.loads((tmp_path / "run.json").read_text())
    records = [r for level in run["levels"] for r in level["records"]]
    assert len(records) == 12 and not any(r["error"] for r in records)
    assert after["request_success_total"] - before["request_success_total"] == len(records)
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == sum(r["prompt_tokens"] for r in records)
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == sum(r["output_tokens"] for r in records)
    assert all(r["output_tokens"] == 8 and len(r["token_times"]) == 8 for r in records)
    for level in run["levels"]:
        summary = level["summary"]
        assert summary["output_tokens"] == 6 * 8 and summary["goodput"] == 1.0
    assert "concurrency 3" in out and "TTFT p50/p90/p99/max (ms)" in out
    for name in ("latency_cdf.png", "throughput_and_p99.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_offline_reports_the_same_figures_and_compare_sets_runs_side_by_side(tmp_path):
    workload = tmp_path / "chat.jsonl"
    bench("offline", *SMALL, "--save-workload", str(workload), "--kv-cache-memory", str(64 << 20),
          "--out", str(tmp_path / "a.json"))
    bench("offline", "--workload", str(workload), "--kv-cache-memory", str(64 << 20), "--out", str(tmp_path / "b.json"))
    a, b = (json.loads(Path(tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a["kind"] == "offline" and a["levels"][0]["summary"]["output_tokens"] == 6 * 8
    assert [r["prompt_tokens"] for r in a["levels"][0]["records"]] == [r["prompt_tokens"] for r in b["levels"][0]["records"]]
    out = bench("compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert "output tokens/s" in out and "b / a" in out and "x" in out


def test_speculative_counts_reported_offline_and_from_a_servers_metrics(tmp_path):
    spec = json.dumps({"method": "ngram", "disable_by_batch_size": 64})
    repetitive = ["--workload", "repetitive", "--num-requests", "2", "--input-len", "100:120", "--output-len", "24"]
    out = bench("offline", *repetitive, "--speculative-config", spec, "--kv-cache-memory", str(64 << 20),
                "--out", str(tmp_path / "offline.json"))
    counts = json.loads((tmp_path / "offline.json").read_text())["levels"][0]["speculation"]
    assert counts["method"] == "ngram" and 0 < counts["accepted"] <= counts["proposed"]
    assert "speculative (ngram): accepted / proposed" in out

    server = start_server(tmp_path, "--speculative-config", spec)
    try:
        bench("serve", "--base-url", server.url, "--api-key", API_KEY, "--concurrency", "2", *repetitive,
              "--out", str(tmp_path / "serve.json"))
        server.wait_idle()
        counts = json.loads((tmp_path / "serve.json").read_text())["levels"][0]["speculation"]
        assert counts["proposed"] == server.metric("tokenmill:spec_decode_num_draft_tokens_total", method="ngram") > 0
        assert counts["accepted"] == server.metric("tokenmill:spec_decode_num_accepted_tokens_total", method="ngram")
    finally:
        server.stop()


def test_json_workload_sends_each_schema_and_reports_the_share_that_validates(server, tmp_path):
    out = bench("serve", "--base-url", server.url, "--api-key", API_KEY, "--concurrency", "4", "--workload", "json",
                "--num-requests", "8", "--out", str(tmp_path / "json.json"))
    records = json.loads((tmp_path / "json.json").read_text())["levels"][0]["records"]
    assert all(r["valid"] is True for r in records)  # the client's own jsonschema check of each output
    assert all(r["output_tokens"] < 400 for r in records)  # the grammar ended them, not max_tokens
    assert "outputs that parse and validate" in out and "100.0%" in out
