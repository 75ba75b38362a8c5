"""A tensor-parallel worker dies under a stream: the engine core notices (the failed collective,
or its poll of the workers while idle) and exits, the front end fails what is in flight, answers
503 from then on and /health turns unhealthy, instead of hanging; no worker is left behind."""

import psutil

from tests.live_server import start_server


def tp_workers(server) -> list[psutil.Process]:
    descendants = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in descendants if "tokenmill.distributed.worker" in " ".join(p.cmdline())]


def test_a_killed_worker_fails_the_stream_and_later_requests_get_503(tmp_path):
    server = start_server(tmp_path, "--tensor-parallel-size", "3", "--dtype", "float32")
    try:
        workers = tp_workers(server)
        assert len(workers) == 2
        chunks = server.running_stream()
        for rank in "012":  # /metrics reports every rank
            assert server.metric("tokenmill:rank_steps_total", rank=rank) > 0
            assert server.metric("tokenmill:rank_collective_bytes_total", rank=rank) > 0
        workers[1].kill()
        server.assert_engine_dead(chunks)
        psutil.wait_procs(workers, timeout=15)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        server.stop()
