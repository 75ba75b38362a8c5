"""The router's exact response cache, over a real backend: a repeated deterministic request is
answered from the cache, identically, streamed and not; a sampled request without a seed never is.
The backend's own count of finished requests tells what reached it."""

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.live_server import API_KEY, MODEL, RunningServer
from tests.router.live_router import RunningRouter, start_router

CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def router(tmp_path_factory, backends) -> Iterator[RunningRouter]:
    running = start_router(tmp_path_factory.mktemp("cached"), backends[:1], "--response-cache", "exact")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=API_KEY, max_retries=0)


def served(backend: RunningServer) -> float:
    return backend.metric("tokenmill:request_success_total")


def chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.with_raw_response.create(**{"model": MODEL, "messages": CHAT, "max_tokens": 12, **kwargs})


def test_a_repeated_greedy_request_is_answered_from_the_cache_identically(client, backends):
    first = chat(client, temperature=0, logprobs=True, top_logprobs=2)
    before = served(backends[0])
    again = chat(client, temperature=0, logprobs=True, top_logprobs=2)
    assert served(backends[0]) == before  # the backend never saw it
    assert first.headers["x-tokenmill-cache"] == "miss" and again.headers["x-tokenmill-cache"] == "exact"
    first, again = first.parse(), again.parse()
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].logprobs == first.choices[0].logprobs
    assert again.usage.completion_tokens == first.usage.completion_tokens
    assert again.usage.model_extra["response_cache"] == "exact" and "response_cache" not in first.usage.model_extra


def stream_text(client: openai.OpenAI, **kwargs) -> tuple[str, str, list]:
    raw = chat(client, stream=True, **kwargs)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers["x-tokenmill-cache"], text, chunks


def test_a_streamed_answer_is_cached_whole_and_replayed_as_a_stream(client, backends, router):
    kwargs = {"temperature": 0, "max_tokens": 10, "messages": [{"role": "user", "content": "Say hello twice."}]}
    direct = openai.OpenAI(base_url=f"{backends[0].url}/v1", api_key=API_KEY, max_retries=0)
    expected = direct.chat.completions.create(model=MODEL, **kwargs).choices[0].message.content
    create = client.chat.completions.with_raw_response.create
    raw = create(model=MODEL, stream=True, **kwargs)
    chunks = list(raw.parse())
    assert raw.headers["x-tokenmill-cache"] == "miss"
    assert all(c.usage is None for c in chunks)  # the usage the router asked for is not passed on
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    before = served(backends[0])
    replay = create(model=MODEL, stream=True, stream_options={"include_usage": True}, **kwargs)
    replayed = list(replay.parse())
    assert replay.headers["x-tokenmill-cache"] == "exact"
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == expected
    assert replayed[-1].usage.model_extra["response_cache"] == "exact" and replayed[-1].usage.completion_tokens > 0
    whole = create(model=MODEL, **kwargs)  # and the same answer, not streamed
    assert whole.headers["x-tokenmill-cache"] == "exact" and whole.parse().choices[0].message.content == expected
    assert served(backends[0]) == before


def test_completions_are_cached_with_their_logprobs(client, backends):
    kwargs = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2}
    first = client.completions.create(**kwargs, stream=True)
    streamed = [c for c in first if c.choices]
    before = served(backends[0])
    again = client.completions.create(**kwargs)
    assert served(backends[0]) == before
    assert again.choices[0].text == "".join(c.choices[0].text for c in streamed)
    assert again.choices[0].logprobs.tokens == [t for c in streamed for t in c.choices[0].logprobs.tokens]


def test_a_sampled_request_without_a_seed_is_never_cached_and_a_seeded_one_is(client, backends):
    before = served(backends[0])
    for _ in range(2):
        assert chat(client, temperature=0.8).headers["x-tokenmill-cache"] == "bypass"
    assert served(backends[0]) == before + 2
    seeded = [chat(client, temperature=0.8, seed=7) for _ in range(2)]
    assert [r.headers["x-tokenmill-cache"] for r in seeded] == ["miss", "exact"]
    assert seeded[0].parse().choices[0].message.content == seeded[1].parse().choices[0].message.content


def test_a_request_can_opt_out_and_a_changed_field_misses(client, backends):
    chat(client, temperature=0)
    off = chat(client, temperature=0, extra_headers={"x-tokenmill-cache": "off"})
    assert off.headers["x-tokenmill-cache"] == "bypass"
    assert chat(client, temperature=0, max_tokens=11).headers["x-tokenmill-cache"] == "miss"
    assert chat(client, temperature=0, user="someone else").headers["x-tokenmill-cache"] == "exact"


def test_errors_are_not_cached(client, router):
    stores = router.metric("tokenmill_router:cache_stores_total")
    for _ in range(2):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=-1, temperature=0)
    assert router.metric("tokenmill_router:cache_stores_total") == stores


def test_the_cache_file_keeps_answers_across_a_restart(tmp_path, backends):
    cache_file = tmp_path / "answers.json"
    args = ("--response-cache", "exact", "--response-cache-file", str(cache_file))
    answers, headers = [], []
    for _ in range(2):
        router = start_router(tmp_path, backends[:1], *args)
        try:
            response = httpx.post(f"{router.url}/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                                  json={"model": MODEL, "messages": CHAT, "max_tokens": 5, "temperature": 0}, timeout=60)  # fmt: skip
            answers.append(response.json()["choices"][0]["message"]["content"])
            headers.append(response.headers["x-tokenmill-cache"])
        finally:
            router.stop()
    assert headers == ["miss", "exact"] and answers[0] == answers[1]
