"""A real `tokenmill router` process on a free port."""

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.live_server import API_KEY, RunningServer


@dataclass
class RunningRouter:
    url: str
    process: subprocess.Popen
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name and labels.items() <= s.labels.items())  # fmt: skip

    def stop(self) -> None:
        self.process.terminate()
        assert self.process.wait(30) == 0, self.log.read_text()[-3000:]


def start_router(tmp_dir: Path, backends: list[RunningServer], *args: str) -> RunningRouter:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_dir / f"router-{port}.log"
    command = [sys.executable, "-m", "tokenmill", "router", "--port", str(port), "--api-key", API_KEY,
               "--health-interval", "1", *(a for b in backends for a in ("--backend", b.url)), *args]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    router = RunningRouter(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            if httpx.get(f"{router.url}/health", timeout=1).status_code == 200:
                return router
        except httpx.TransportError:
            time.sleep(0.2)
