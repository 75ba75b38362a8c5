"""Overload control on a server of its own: a full queue answers 429, a slow request times out,
SIGTERM drains what is in flight. The last test stops the server."""

import concurrent.futures
import time

import httpx
import openai
import pytest

from tests.live_server import API_KEY, MODEL, start_server

LONG = "The mill wheel turned slowly in the evening light. " * 50  # ~500 tokens: a slow prefill


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("small"), "--max-queued-requests", "2", "--request-timeout", "6")
    yield running
    running.stop()


def completion(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", headers=server.headers(), timeout=120,
                      json={"model": MODEL, "max_tokens": 4, **body})


def test_a_full_queue_answers_429_with_retry_after(small_server):
    rejected_before = small_server.metric("tokenmill:request_rejected_total", reason="queue_full")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: completion(small_server, prompt=f"{i} {LONG}"), range(8)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) == {200, 429}, codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
    rejected = small_server.metric("tokenmill:request_rejected_total", reason="queue_full") - rejected_before
    assert rejected == codes.count(429)


def test_a_request_past_its_timeout_gets_408_and_is_aborted(small_server):
    start = time.monotonic()
    response = completion(small_server, prompt="Count:", max_tokens=4000, ignore_eos=True)
    assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"
    assert time.monotonic() - start < 30
    small_server.wait_idle()  # aborted: its blocks are back


def test_sigterm_drains_in_flight_streams_then_exits(small_server):
    client = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key=API_KEY, max_retries=0)
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=40, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    text = next(chunks).choices[0].text
    small_server.terminate()
    reason = None
    for chunk in chunks:
        for choice in chunk.choices:
            text += choice.text
            reason = choice.finish_reason or reason
    assert reason == "length" and text
    small_server.stop()  # exits cleanly, the engine shut down
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{small_server.url}/health")
