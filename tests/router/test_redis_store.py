"""Two routers over one real Redis server share their cached answers."""

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.live_server import API_KEY, MODEL
from tests.router.live_router import start_router

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (.ci/run installs it)")


@pytest.fixture
def redis_server(tmp_path) -> Iterator[tuple[str, subprocess.Popen]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
            time.sleep(0.1)
    yield url, server
    server.terminate()
    server.wait(10)


def test_two_routers_sharing_one_redis_serve_each_others_answers(tmp_path, redis_server, backends):
    redis_url, server = redis_server
    routers = [start_router(tmp_path, backends[:1], "--response-cache", "exact", "--response-cache-redis", redis_url,
                            "--response-cache-ttl", "60") for _ in range(2)]  # fmt: skip
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 6, "temperature": 0}
    try:
        answers = [httpx.post(f"{router.url}/v1/chat/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {API_KEY}"}) for router in routers]  # fmt: skip
        assert [a.headers["x-tokenmill-cache"] for a in answers] == ["miss", "exact"]
        assert answers[1].json()["choices"] == answers[0].json()["choices"]
        assert routers[1].metric("tokenmill_router:requests_total") == 0  # the second never asked a backend
        keys = redis.Redis.from_url(redis_url).keys("tokenmill:response:*")
        assert len(keys) == 1 and 0 < redis.Redis.from_url(redis_url).pttl(keys[0]) <= 60_000
        server.kill()  # Redis gone: answers go on, uncached
        server.wait(10)
        gone = httpx.post(f"{routers[0].url}/v1/chat/completions", json={**body, "max_tokens": 4}, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert gone.status_code == 200 and gone.headers["x-tokenmill-cache"] == "miss"
    finally:
        for router in routers:
            router.stop()
