"""The engine core process dies under a stream: the front end notices at once (the end of the core's
pipe), fails what is in flight with an error event, answers 503 from then on and still exits cleanly."""

import psutil

from tests.live_server import start_server


def engine_core(server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children()
    return next(c for c in children if "spawn_main" in " ".join(c.cmdline()))


def test_a_killed_core_fails_the_stream_and_later_requests_get_503(tmp_path):
    server = start_server(tmp_path)
    try:
        chunks = server.running_stream()
        engine_core(server).kill()
        server.assert_engine_dead(chunks)
    finally:
        server.stop()
