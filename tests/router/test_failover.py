"""A backend killed under a load of 32 requests: every request that had not begun to stream
completes on another backend (none lost), and the router reports the dead backend unhealthy
while it keeps serving."""

import signal
import threading
import time

import openai

from tests.live_server import API_KEY, MODEL, RUNNING
from tests.router.conftest import start_backends
from tests.router.live_router import start_router


def test_a_killed_backend_loses_no_request_that_had_not_begun(tmp_path):
    backends = start_backends(tmp_path, 3)
    router = start_router(tmp_path, backends, "--policy", "round_robin")
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    results: dict[int, str] = {}
    begun_then_lost: list[int] = []

    def run(i: int) -> None:
        args = dict(model=MODEL, prompt=f"Count from {i} to {i + 30}:", max_tokens=24, temperature=0,
                    extra_body={"ignore_eos": True})
        if i % 2:
            results[i] = client.completions.create(**args).choices[0].finish_reason
            return
        chunks = 0
        try:
            for chunk in client.completions.create(**args, stream=True):
                chunks += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    results[i] = chunk.choices[0].finish_reason
        except openai.APIError:
            assert chunks > 0, f"request {i} failed before its stream began"
            begun_then_lost.append(i)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        victim = backends[1]
        victim.process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 300
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert all(results.get(i) == "length" for i in range(32) if i not in begun_then_lost)
        assert all(i % 2 == 0 for i in begun_then_lost)  # only streams that had begun
        assert router.metric("tokenmill_router:backend_healthy", backend=victim.url) == 0
        assert router.metric("tokenmill_router:backend_healthy") == 2
        assert router.metric("tokenmill_router:backend_in_flight") == 0  # nothing counted after it ended
        assert router.metric("tokenmill_router:backend_tokens_in_flight") == 0
        assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text is not None
    finally:
        RUNNING.remove(backends[1])
        backends[1].process.kill()
        router.stop()
        for backend in backends[::2]:
            backend.stop()
