"""Every bad request gets a 4xx with an OpenAI error body naming the field; nothing else is hurt."""

import json
import sys
import threading
from pathlib import Path

import openai
import pytest

from tests.live_server import MODEL
from tokenmill import SamplingParams

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
LONG_PROMPT = "word " * 9000  # past the 8192-token context

# (endpoint, body, status, error type, param)
CASES = {
    "wrong type": ("completions", {**COMPLETION, "temperature": "hot"}, 400, "invalid_request_error", "temperature"),
    "missing field": ("chat/completions", {"model": MODEL}, 400, "invalid_request_error", "messages"),
    "unknown model": ("completions", {**COMPLETION, "model": "gpt-9"}, 404, "invalid_request_error", "model"),
    "prompt too long": ("completions", {**COMPLETION, "prompt": LONG_PROMPT}, 400, "invalid_request_error", "prompt"),
    "chat too long": ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": LONG_PROMPT}]},
                      400, "invalid_request_error", "messages"),
    "max_tokens 0": ("completions", {**COMPLETION, "max_tokens": 0}, 400, "invalid_request_error", "max_tokens"),
    "max_completion_tokens 0": ("chat/completions", {**CHAT, "max_completion_tokens": 0}, 400,
                                "invalid_request_error", "max_completion_tokens"),
    "negative temperature": ("chat/completions", {**CHAT, "temperature": -0.5}, 400, "invalid_request_error",
                             "temperature"),
    "top_p 0": ("completions", {**COMPLETION, "top_p": 0}, 400, "invalid_request_error", "top_p"),
    "top_p over 1": ("chat/completions", {**CHAT, "top_p": 1.5}, 400, "invalid_request_error", "top_p"),
    "n 0": ("completions", {**COMPLETION, "n": 0}, 400, "invalid_request_error", "n"),
    "too many logprobs": ("completions", {**COMPLETION, "logprobs": 21}, 400, "invalid_request_error", "logprobs"),
    "too many top_logprobs": ("chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, 400,
                              "invalid_request_error", "top_logprobs"),
    "token id outside the vocabulary": ("completions", {**COMPLETION, "prompt": [1, 2, 10**9]}, 400,
                                        "invalid_request_error", "prompt"),
    "empty messages": ("chat/completions", {**CHAT, "messages": []}, 400, "invalid_request_error", "messages"),
    "unknown role": ("chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "Hi"}]}, 400,
                     "invalid_request_error", "messages"),
    "n 100000": ("chat/completions", {**CHAT, "n": 100_000}, 400, "invalid_request_error", "n"),
    "best_of 100000": ("completions", {**COMPLETION, "best_of": 100_000}, 400, "invalid_request_error", "best_of"),
    "best_of above n": ("completions", {**COMPLETION, "n": 1, "best_of": 2}, 400, "invalid_request_error", "best_of"),
    "logit_bias outside the vocabulary": ("completions", {**COMPLETION, "logit_bias": {"1000000000": 5}}, 400,
                                          "invalid_request_error", "logit_bias"),
    "logit_bias key not a token id": ("chat/completions", {**CHAT, "logit_bias": {"hello": 5}}, 400,
                                      "invalid_request_error", "logit_bias"),
    "logit_bias past 100": ("chat/completions", {**CHAT, "logit_bias": {"42": 101}}, 400, "invalid_request_error",
                            "logit_bias"),
    "a 100,000-character stop string": ("completions", {**COMPLETION, "stop": "x" * 100_000}, 400,
                                        "invalid_request_error", "stop"),
    "33 stop strings": ("chat/completions", {**CHAT, "stop": [f"s{i}" for i in range(33)]}, 400,
                        "invalid_request_error", "stop"),
    "an empty stop string": ("completions", {**COMPLETION, "stop": [""]}, 400, "invalid_request_error", "stop"),
    "negative token id": ("completions", {**COMPLETION, "prompt": [1, -5]}, 400, "invalid_request_error", "prompt"),
    "two prompts": ("completions", {**COMPLETION, "prompt": ["a", "b"]}, 400, "invalid_request_error", "prompt"),
    "echo": ("completions", {**COMPLETION, "echo": True}, 400, "invalid_request_error", "echo"),
    "n past --max-n": ("completions", {**COMPLETION, "n": 129}, 400, "invalid_request_error", "n"),
    "message not an object": ("chat/completions", {**CHAT, "messages": ["Hi"]}, 400, "invalid_request_error",
                              "messages"),
}
DEEP = 5000
HOSTILE_BODIES = {  # raw bodies past what the JSON parser or the engine should ever be given
    "nested 5,000 deep": json.dumps(COMPLETION)[:-1].encode() + b', "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "unclosed 5,000 deep": json.dumps(COMPLETION)[:-1].encode() + b', "x": ' + b"[" * DEEP,
    "nested objects": json.dumps(COMPLETION)[:-1].encode() + b', "x": ' + b'{"a": ' * DEEP + b"1" + b"}" * DEEP + b"}",
}


def assert_error(response, status: int, type_: str, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_ and error["param"] == param and error["message"]


@pytest.mark.parametrize("case", CASES)
def test_bad_field(post, case):
    endpoint, body, status, type_, param = CASES[case]
    assert_error(post(endpoint, json.dumps(body).encode()), status, type_, param)


@pytest.mark.parametrize("raw", [b'{"model": "x", "prompt": ', b"[1, 2]", b""])
def test_malformed_json(post, raw):
    assert_error(post("completions", raw), 400, "invalid_request_error", None)


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_deeply_nested_json_is_refused_before_parsing(post, name):
    response = post("completions", HOSTILE_BODIES[name])
    assert_error(response, 400, "invalid_request_error", None)
    assert "levels" in response.json()["error"]["message"]


def test_a_shallow_body_with_brackets_in_its_strings_is_served(post):
    body = {**COMPLETION, "prompt": "[" * 200 + "{" * 200, "user": "]" * 300}
    assert post("completions", json.dumps(body).encode()).status_code == 200


@pytest.mark.parametrize("hostile", [*HOSTILE_BODIES, "unknown role", "n 100000", "best_of 100000",
                                     "logit_bias outside the vocabulary"])
def test_after_a_hostile_request_the_server_serves_a_normal_one_unchanged(post, llm, hostile):
    if hostile in HOSTILE_BODIES:
        assert post("completions", HOSTILE_BODIES[hostile]).status_code == 400
    else:
        endpoint, body, status, _, _ = CASES[hostile]
        assert post(endpoint, json.dumps(body).encode()).status_code == status
    response = post("completions", json.dumps({**COMPLETION, "max_tokens": 12, "temperature": 0}).encode())
    alone = llm.generate([COMPLETION["prompt"]], SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)
    assert response.status_code == 200 and response.json()["choices"][0]["text"] == alone[0].outputs[0].text


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" * 5000])
def test_numbers_json_cannot_hold_are_refused(post, number):
    raw = json.dumps(COMPLETION)[:-1].encode() + b', "temperature": ' + number + b"}"
    response = post("completions", raw)
    assert_error(response, 400, "invalid_request_error", None)
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_not_sent_as_json_is_a_415(post, content_type):
    response = post("completions", json.dumps(COMPLETION).encode(), headers={"Content-Type": content_type})
    assert_error(response, 415, "invalid_request_error", None)


# At their limits, served: the most logprobs, the most samples, the longest stop strings, and an empty message.
AT_THE_LIMITS = {
    "logprobs 20": ("completions", {**COMPLETION, "logprobs": 20}),
    "top_logprobs 20": ("chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 20}),
    "n 128": ("completions", {**COMPLETION, "n": 128, "max_tokens": 1}),
    "32 stop strings of 1,024 characters": ("completions", {**COMPLETION, "stop": [f"{i:02d}" * 512 for i in range(32)]}),
    "an empty message": ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": ""}]}),
}


@pytest.mark.parametrize("case", AT_THE_LIMITS)
def test_requests_at_the_limits_are_served(post, case):
    endpoint, body = AT_THE_LIMITS[case]
    response = post(endpoint, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == body.get("n", 1)


def internals_in(text: str) -> list[str]:
    """What an error body must never show: a traceback, a source file, a path of this machine."""
    return [mark for mark in ("Traceback", ".py", "site-packages", str(Path.cwd()), sys.prefix, "File \"")
            if mark in text]


def test_no_error_body_shows_a_traceback_or_a_path(post):
    bodies = [post(endpoint, json.dumps(body).encode()) for endpoint, body, *_ in CASES.values()]
    bodies += [post("completions", raw) for raw in HOSTILE_BODIES.values()]
    bodies += [post("completions", b'{"model": "x", "prompt": '), post("nowhere", b"{}")]
    bodies += [post("load_lora_adapter", json.dumps({"lora_name": "a", "lora_path": str(Path.cwd())}).encode())]
    for response in bodies:
        assert 400 <= response.status_code < 500 and not internals_in(response.text), response.text


def test_invalid_utf8(post):
    raw = b'{"model": "' + MODEL.encode() + b'", "prompt": "caf\xe9 \xff"}'
    response = post("completions", raw)
    assert_error(response, 400, "invalid_request_error", None)
    assert "UTF-8" in response.json()["error"]["message"]


def test_oversized_body(post):
    raw = json.dumps({**COMPLETION, "prompt": "x" * (5 << 20)}).encode()
    assert_error(post("completions", raw), 413, "invalid_request_error", None)


def test_the_openai_client_sees_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT["messages"], temperature=-1)
    assert info.value.status_code == 400 and info.value.body["param"] == "temperature"


def test_bad_requests_do_not_disturb_one_in_flight(client, post, llm):
    """A long streamed request runs while every bad request above arrives; it ends as if alone."""
    prompt = "Once upon a time"
    chunks: list[str] = []

    def stream() -> None:
        for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=64, temperature=0, stream=True):
            chunks.extend(c.text for c in chunk.choices)

    worker = threading.Thread(target=stream)
    worker.start()
    for endpoint, body, status, _, _ in CASES.values():
        assert post(endpoint, json.dumps(body).encode()).status_code == status
    worker.join(timeout=120)
    alone = llm.generate([prompt], SamplingParams(max_tokens=64, temperature=0), use_tqdm=False)[0].outputs[0].text
    assert "".join(chunks) == alone


@pytest.mark.parametrize("extra", [{"seed": -7}, {"seed": 2**70}, {"top_k": 10**9}, {"stop_token_ids": [-1, 10**9]},
                                   {"stop_token_ids": [-1, 10**9, 10**30], "min_tokens": 2}])
def test_odd_but_valid_values_are_served(post, extra):
    response = post("completions", json.dumps({**COMPLETION, "temperature": 0.7, **extra}).encode())
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
