"""Real `tokenmill serve` processes on free ports, driven over real sockets."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tokenmill.model.default import DEFAULT_MODEL_NAME

API_KEY = "test-key"
MODEL = DEFAULT_MODEL_NAME
RUNNING: list["RunningServer"] = []  # started and not yet stopped


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

    def running_stream(self):
        """A long streamed chat completion, returned once its first token came (the request is
        running in the engine): the rest of its chunks."""
        import openai

        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0)
        messages = [{"role": "user", "content": "Count to a thousand."}]
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2000, stream=True,
                                                extra_body={"ignore_eos": True})
        chunks = iter(stream)
        for _ in range(2):  # the role, then the first token
            next(chunks)
        return chunks

    def assert_stream_fails(self, chunks, within_s: float = 5.0) -> None:
        """The engine died under a stream: the stream ends with its error event within seconds."""
        import openai
        import pytest

        start = time.monotonic()
        with pytest.raises(openai.APIError, match="engine core exited"):
            for _ in chunks:
                pass
        assert time.monotonic() - start < within_s

    def wait_health(self, status: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (code := httpx.get(f"{self.url}/health").status_code) != status:
            assert time.monotonic() < deadline, f"/health still answers {code}"
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """The server's exit code, once it has stopped by itself."""
        code = self.process.wait(timeout)
        RUNNING.remove(self)
        return code

    def terminate(self) -> None:
        """SIGTERM, once: a second one would make uvicorn skip the drain."""
        if not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then a clean exit: in-flight requests drained, the engine shut down. Once."""
        if self not in RUNNING:
            return
        self.terminate()
        code = self.process.wait(timeout)
        RUNNING.remove(self)
        assert code == 0, f"exit code {code}: {self.log.read_text()[-3000:]}"
        log = self.log.read_text()
        assert "Application shutdown complete" in log and "leaked" not in log, log[-3000:]


# Flags every test server gets (conftest adds --enforce-eager when the suite runs with it).
COMMON_ARGS: list[str] = []


def start_server(tmp_dir: Path, *args: str) -> RunningServer:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_dir / f"server-{port}.log"
    command = [sys.executable, "-m", "tokenmill", "serve", "--port", str(port), "--api-key", API_KEY,
               "--kv-cache-memory", str(256 * 2**20), "--dtype", "float32", "--quantization", "none", *COMMON_ARGS, *args]
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
    RUNNING.append(server)
    return server
