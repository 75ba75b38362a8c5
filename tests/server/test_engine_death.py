"""The engine core process is killed (SIGKILL) under load: every client in flight gets an error
(an error event and the stream's end, or a 503) within 5 s and none hangs; /health turns 503; a new
core is started in its place and serves the same answers as before. And the other way round: the
HTTP front killed, that core exits instead of running orphaned. With no restart left, the server
exits with code 1 for its supervisor."""

import threading
import time

import httpx
import psutil

from tests.live_server import MODEL, start_server

GREEDY = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


def engine_core(server) -> psutil.Process:
    children = psutil.Process(server.process.pid).children()
    return next(c for c in children if "spawn_main" in " ".join(c.cmdline()))


def greedy_text(server) -> str:
    response = httpx.post(f"{server.url}/v1/completions", headers=server.headers(), json=GREEDY, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


class Client(threading.Thread):
    """One long request, streamed or not, that records how and when it ended."""

    def __init__(self, server, stream: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.stream = server, stream
        self.outcome: str | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        body = {"model": MODEL, "prompt": "Count to a thousand:", "max_tokens": 4000, "ignore_eos": True,
                "stream": self.stream}  # fmt: skip
        try:
            with httpx.stream("POST", f"{self.server.url}/v1/completions", json=body, headers=self.server.headers(),
                              timeout=60) as response:  # fmt: skip
                text = "".join(response.iter_text())
                self.outcome = f"{response.status_code} {text[-300:]}"
        except httpx.HTTPError as exc:
            self.outcome = f"transport error {exc!r}"
        self.ended_at = time.monotonic()


def test_a_killed_core_fails_requests_in_5_s_is_replaced_and_the_new_one_dies_with_its_front(tmp_path):
    server = start_server(tmp_path)
    try:
        before = greedy_text(server)
        clients = [Client(server, stream=i % 2 == 0) for i in range(6)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 60
        while server.metric("tokenmill:num_requests_running") < len(clients):  # all in the engine
            assert time.monotonic() < deadline
            time.sleep(0.1)
        killed_at = time.monotonic()
        engine_core(server).kill()
        for c in clients:
            c.join(10)
            assert not c.is_alive(), "a client still hangs"
            assert c.ended_at - killed_at < 5.0
            if c.stream:  # the 200 was sent before the kill: the stream ends with an error event
                assert c.outcome.startswith("200") and "engine core exited" in c.outcome and "[DONE]" in c.outcome
            else:
                assert c.outcome.startswith("503") and "engine_dead" in c.outcome, c.outcome
        server.wait_health(503, timeout=5)
        server.wait_health(200, timeout=180)  # the new core has loaded the model
        queries = server.metric("tokenmill:prefix_cache_queries_total")
        assert greedy_text(server) == before
        time.sleep(0.5)  # the core reports its counts after the step
        assert server.metric("tokenmill:prefix_cache_queries_total") > queries  # the new core's counts add on
        log = server.log.read_text()
        assert "restarting the engine core (2 restarts left)" in log and "Exception in callback" not in log
        core = engine_core(server)  # the new one
        server.process.kill()
        assert server.wait_exit() != 0
        _, alive = psutil.wait_procs([core], timeout=5)
        assert not alive, "the engine core runs on without its front"
    finally:
        server.stop()


def test_with_no_restart_left_the_server_exits_with_code_1(tmp_path):
    server = start_server(tmp_path, "--max-engine-restarts", "0")
    try:
        chunks = server.running_stream()
        engine_core(server).kill()
        server.assert_stream_fails(chunks)
        assert server.wait_exit() == 1
        assert "no restart is left" in server.log.read_text()
    finally:
        server.stop()
