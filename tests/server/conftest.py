"""Real `tokenmill serve` processes on free ports, driven over real sockets."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenmill.model.default import DEFAULT_MODEL_NAME

API_KEY = "test-key"
MODEL = DEFAULT_MODEL_NAME
_running: list["RunningServer"] = []


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    log: Path
    terminated: bool = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics, keyed by (sample name, sorted labels)."""
        text = httpx.get(f"{self.url}/metrics").text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a sample over the label sets that include the given labels."""
        return sum(v for (n, ls), v in self.metrics().items() if n == name and labels.items() <= dict(ls).items())

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until nothing runs or waits and every KV block is free (the core reports after each step)."""
        deadline = time.monotonic() + timeout
        while True:
            idle = all(self.metric(f"tokenmill:{name}") == 0
                       for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"))
            if idle:
                return
            assert time.monotonic() < deadline, f"server not idle: {self.metrics()}"
            time.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM, once: a second one would make uvicorn skip the drain."""
        if not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then a clean exit: in-flight requests drained, the engine shut down. Once."""
        if self not in _running:
            return
        self.terminate()
        code = self.process.wait(timeout)
        _running.remove(self)
        assert code in (0, -signal.SIGTERM), f"exit code {code}: {self.log.read_text()[-3000:]}"
        assert "Application shutdown complete" in self.log.read_text()


def start_server(tmp_dir: Path, *args: str) -> RunningServer:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_dir / f"server-{port}.log"
    command = [sys.executable, "-m", "tokenmill", "serve", "--port", str(port), "--api-key", API_KEY,
               "--kv-cache-memory", str(256 * 2**20), *args]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy())
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the server did not start in time"
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    _running.append(server)
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
def post(server) -> Callable[..., httpx.Response]:
    """Raw POSTs to /v1/<path>, with the API key."""

    def send(path: str, content: bytes | None = None, **kwargs) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/{path}", content=content, headers=server.headers(), timeout=120, **kwargs)

    return send


@pytest.fixture(autouse=True)
def every_server_ends_idle() -> Iterator[None]:
    """After every test, each running server has nothing in flight and its whole KV pool free."""
    yield
    for running in list(_running):
        running.wait_idle()
