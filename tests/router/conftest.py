"""A `tokenmill router` over real `tokenmill serve` backends, as the `server` and `client` that the
server's own API tests drive (tests/router/test_router_openai_api.py runs them through it)."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.live_server import API_KEY, RunningServer, start_server
from tests.router.live_router import RunningRouter, start_router


def start_backends(tmp_dir: Path, count: int, *args: str) -> list[RunningServer]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: start_server(tmp_dir, *args), range(count)))


@pytest.fixture(scope="package")  # its servers go when the package ends
def backends(tmp_path_factory) -> Iterator[list[RunningServer]]:
    running = start_backends(tmp_path_factory.mktemp("backends"), 3)
    yield running
    for backend in running:
        backend.stop()


@pytest.fixture(scope="package")
def server(tmp_path_factory, backends) -> Iterator[RunningRouter]:
    """The router, prefix-aware: a repeated conversation finds its prompt cached."""
    router = start_router(tmp_path_factory.mktemp("router"), backends, "--policy", "prefix_aware")
    yield router
    router.stop()


@pytest.fixture(scope="package")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
