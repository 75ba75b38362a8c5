"""The server through the official openai client: completions and chat, streamed and not."""

import httpx
import openai
import pytest

from tests.live_server import MODEL
from tokenmill import SamplingParams

PROMPT = "The three primary colors are"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def streamed_texts(stream) -> tuple[dict[int, str], dict[int, str | None], object]:
    """Text and finish reason per choice index, and the usage chunk, from a stream of chunks."""
    texts: dict[int, str] = {}
    reasons: dict[int, str | None] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            piece = choice.text if hasattr(choice, "text") else (choice.delta.content or "")
            texts[choice.index] = texts.get(choice.index, "") + piece
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    return texts, reasons, usage


def test_greedy_completion_equals_the_offline_engine(client, llm):
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    offline = llm.generate([PROMPT], SamplingParams(max_tokens=24, temperature=0), use_tqdm=False)[0]
    assert result.choices[0].text == offline.outputs[0].text
    assert result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == len(offline.prompt_token_ids)
    assert result.usage.completion_tokens == 24
    assert result.usage.total_tokens == result.usage.prompt_tokens + 24
    timings = result.model_extra["timings"]
    assert 0 <= timings["queue_ms"] <= timings["ttft_ms"] <= timings["e2e_ms"]


def test_greedy_chat_answers_paris(client):
    result = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=32, temperature=0)
    assert "Paris" in result.choices[0].message.content
    assert result.choices[0].message.role == "assistant"
    assert result.object == "chat.completion"


def test_logit_bias_forces_and_bans_tokens(client, llm):
    """+100 on one token makes greedy decoding choose it at every step; -100 on the token greedy
    decoding chooses first makes the first token another one (the offline engine as the reference)."""
    forced = llm.engine.tokenizer.encode(" banana")[0]
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                       logit_bias={str(forced): 100}, logprobs=0)
    assert result.choices[0].logprobs.tokens == [" banana"] * 6
    plain = llm.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0), use_tqdm=False)[0].outputs[0]
    banned = plain.token_ids[0]
    result = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1, temperature=0)
    chat_first = llm.engine.tokenizer.encode(result.choices[0].message.content)[0]
    result = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=1, temperature=0,
                                            logit_bias={str(chat_first): -100})
    assert llm.engine.tokenizer.encode(result.choices[0].message.content)[0] != chat_first
    biased = llm.generate([PROMPT], SamplingParams(max_tokens=1, temperature=0, logit_bias={banned: -100}),
                          use_tqdm=False)[0].outputs[0]
    assert biased.token_ids[0] != banned


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streamed_text_equals_the_non_streamed_text_for_the_same_seed(client, endpoint):
    common = dict(model=MODEL, max_tokens=40, temperature=0.9, seed=1234, n=2)
    if endpoint == "completions":
        whole = client.completions.create(prompt=PROMPT, **common)
        stream = client.completions.create(prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **common)
        expected = {c.index: c.text for c in whole.choices}
    else:
        whole = client.chat.completions.create(messages=QUESTION, **common)
        stream = client.chat.completions.create(messages=QUESTION, stream=True,
                                                stream_options={"include_usage": True}, **common)
        expected = {c.index: c.message.content for c in whole.choices}
    texts, reasons, usage = streamed_texts(stream)
    assert texts == expected
    assert expected[0] != expected[1]  # n=2 samples differ
    assert set(reasons.values()) <= {"stop", "length"} and None not in reasons.values()
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_string_ends_the_text_before_it(client):
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    assert "," in free
    stopped = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stop=[","])
    assert stopped.choices[0].text == free[: free.index(",")]
    assert stopped.choices[0].finish_reason == "stop"


def test_a_stop_string_ends_one_sample_while_the_others_go_on(client):
    """n = 4 sampled continuations: each ends at its own first stop string or runs to max_tokens, and
    (the fixture checks) the samples the front end stopped are aborted in the core, every block freed."""
    free = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, n=4, temperature=1.0, seed=11)
    stopped = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, n=4, temperature=1.0, seed=11,
                                        stop=[" and"])
    by_index = {c.index: c for c in stopped.choices}
    for choice in free.choices:
        ended = by_index[choice.index]
        if " and" in choice.text:
            assert ended.text == choice.text[: choice.text.index(" and")] and ended.finish_reason == "stop"
        else:
            assert ended.text == choice.text and ended.finish_reason == choice.finish_reason
    assert any(" and" in c.text for c in free.choices), "no sample reached the stop string"


def test_completion_logprobs(client):
    result = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3)
    lp = result.choices[0].logprobs
    assert "".join(lp.tokens) == result.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and logprob <= 0
        assert max(top.values()) == pytest.approx(logprob)  # greedy: the chosen token is the most likely
        assert top[token] == pytest.approx(logprob)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]


def test_chat_logprobs_streamed_and_not(client):
    common = dict(model=MODEL, messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**common).choices[0].logprobs.content
    assert len(whole) == 6
    assert all(len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token for entry in whole)
    streamed = [e for chunk in client.chat.completions.create(stream=True, **common)
                for choice in chunk.choices if choice.logprobs for e in choice.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]


def test_max_completion_tokens_bounds_chat(client):
    result = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=3, temperature=0)
    assert result.usage.completion_tokens == 3
    assert result.choices[0].finish_reason == "length"


def test_models_health_and_version(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]


def test_every_v1_route_needs_the_api_key(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert info.value.body["type"] == "authentication_error"
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions")]:
        assert httpx.request(method, f"{server.url}{path}", json={}).status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200  # outside /v1: open


def test_a_repeated_conversation_reports_its_cached_prompt_tokens(client):
    messages = [{"role": "system", "content": "You are terse. " * 40}, *QUESTION]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens > 100
    assert again.usage.prompt_tokens_details.cached_tokens == (first.usage.prompt_tokens - 1) // 16 * 16
    assert again.choices[0].message.content == first.choices[0].message.content
