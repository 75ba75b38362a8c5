"""A `tokenmill serve` process of the benchmarks' own, on a free port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class LocalServer:
    url: str  # without /v1
    process: subprocess.Popen
    log: Path | None

    @classmethod
    def launch(cls, engine_args: list[str], log: Path | None = None, command: str = "serve") -> LocalServer:
        """Starts `tokenmill serve` (or another of its servers: router, disagg-proxy) and returns at
        once; wait_ready() for its health."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "tokenmill", command, "--port", str(port), *engine_args]
        output = log.open("w") if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        return cls(f"http://127.0.0.1:{port}", process, log)

    @classmethod
    def launch_router(cls, backends: list[LocalServer], log: Path | None, *args: str) -> LocalServer:
        """`tokenmill router` over the backends, started and ready."""
        router = cls.launch([*(a for b in backends for a in ("--backend", b.url)), *args], log, "router")
        router.wait_ready()
        return router

    def wait_ready(self, timeout_s: float = 600) -> float:
        """Seconds until /health answered 200; SystemExit if the server exits or takes too long."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log is not None else "(no log kept)"
                raise SystemExit(f"the server exited:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.url} did not become ready in {timeout_s:.0f} s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
