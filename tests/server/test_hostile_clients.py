"""Clients that attack with connections rather than bodies: slow headers and slow bodies held open
(slowloris), and thousands of connections at once. Every answer is a 2xx or a 4xx with OpenAI's
error body, and a normal request served meanwhile gets its usual answer."""

import asyncio
import json
import resource
import socket
import time

import pytest

from tests.live_server import API_KEY, MODEL

GREEDY = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
CONNECTIONS = 2000


def request_bytes(host: str, body: dict) -> bytes:
    raw = json.dumps(body).encode()
    return (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n").encode() + raw


async def exchange(host: str, port: int, body: dict) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request_bytes(f"{host}:{port}", body))
        await writer.drain()
        answer = await reader.read()  # Connection: close: the answer ends with the connection
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


@pytest.fixture
def many_files():
    """Room for thousands of sockets in this process (the server raises its own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * CONNECTIONS)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_headers_and_bodies_held_open_do_not_stop_a_normal_request(server, many_files):
    host, port = server.url.removeprefix("http://").split(":")
    slow: list[socket.socket] = []
    try:
        for i in range(300):
            s = socket.create_connection((host, int(port)))
            if i % 2:  # half the headers, never finished
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:  # whole headers, the body all but its last 40 bytes
                s.sendall(request_bytes(host, GREEDY)[:-40])
            slow.append(s)
        start = time.monotonic()
        status, body = asyncio.run(exchange(host, int(port), GREEDY))
        assert status == 200 and body["choices"][0]["text"]
        assert time.monotonic() - start < 30
    finally:
        for s in slow:
            s.close()


def test_thousands_of_connections_at_once_get_answers_or_429s(server, many_files):
    host, port = server.url.removeprefix("http://").split(":")
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}

    async def flood() -> list[tuple[int, dict] | BaseException]:
        return await asyncio.gather(*(exchange(host, int(port), body) for _ in range(CONNECTIONS)),
                                    return_exceptions=True)  # fmt: skip

    answers = asyncio.run(flood())
    failures = [a for a in answers if isinstance(a, BaseException)]
    assert not failures, f"{len(failures)} connections failed, e.g. {failures[0]!r}"
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 429}, statuses
    assert all(set(b["error"]) == {"message", "type", "param", "code"} for s, b in answers if s == 429)
    assert sum(s == 200 for s, _ in answers) >= 256  # at least a full queue's worth were served
    status, greedy = asyncio.run(exchange(host, int(port), GREEDY))
    assert status == 200 and greedy["choices"][0]["text"]
