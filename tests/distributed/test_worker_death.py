"""A tensor-parallel worker dies under a stream: the engine core notices (the failed collective,
or its poll of the workers while idle) and exits, the front end fails what is in flight instead of
hanging, and, with no restart allowed, exits with code 1 for its supervisor; no worker is left behind."""

import psutil

from tests.live_server import start_server


def tp_workers(server) -> list[psutil.Process]:
    descendants = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in descendants if "tokenmill.distributed.worker" in " ".join(p.cmdline())]


def test_a_killed_worker_fails_the_stream_and_the_server_exits_for_its_supervisor(tmp_path):
    server = start_server(tmp_path, "--tensor-parallel-size", "3", "--dtype", "float32", "--max-engine-restarts", "0")
    try:
        workers = tp_workers(server)
        assert len(workers) == 2
        chunks = server.running_stream()
        for rank in "012":  # /metrics reports every rank
            assert server.metric("tokenmill:rank_steps_total", rank=rank) > 0
            assert server.metric("tokenmill:rank_collective_bytes_total", rank=rank) > 0
        workers[1].kill()
        server.assert_stream_fails(chunks, within_s=15)  # a collective's timeout, then the core's exit
        assert server.wait_exit() == 1
        assert "no restart is left" in server.log.read_text()
        psutil.wait_procs(workers, timeout=15)
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        server.stop()
