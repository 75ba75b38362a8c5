"""`tokenmill bench serve` against the router as against any server: what it counts equals what
the backends behind the router counted."""

import json

from tests.bench.test_bench_cli import SMALL, bench
from tests.live_server import API_KEY


def test_bench_serve_through_the_router_counts_what_the_backends_served(server, backends, tmp_path):
    def served() -> tuple[float, float]:
        return (sum(b.metric("tokenmill:request_success_total") for b in backends),
                sum(b.metric("tokenmill:generation_tokens_total") for b in backends))  # fmt: skip

    before = served()
    routed = server.metric("tokenmill_router:requests_total", status="200")
    out = bench("serve", "--base-url", server.url, "--api-key", API_KEY, "--concurrency", "2", *SMALL,
                "--out", str(tmp_path / "run.json"))  # fmt: skip
    for backend in backends:
        backend.wait_idle()
    records = json.loads((tmp_path / "run.json").read_text())["levels"][0]["records"]
    assert len(records) == 6 and not any(r["error"] for r in records)
    after = served()
    assert after[0] - before[0] == 6 and after[1] - before[1] == sum(r["output_tokens"] for r in records)
    assert server.metric("tokenmill_router:requests_total", status="200") - routed == 6
    assert "concurrency 2" in out
