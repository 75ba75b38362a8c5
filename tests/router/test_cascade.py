"""A model cascade over real backends: the default model quantized (Q4_1, the small one) and in
float32 (the large one). What each model says directly is the reference."""

from collections.abc import Iterator

import openai
import pytest

from tests.live_server import API_KEY, MODEL, RunningServer, start_server
from tests.router.live_router import start_router

SMALL = "smollm2-q4"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("small"), "--quantization", "gguf", "--served-model-name", SMALL)
    yield server
    server.stop()


def direct(server: RunningServer, model: str, **kwargs) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    return client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0,
                                          **kwargs).choices[0].message.content  # fmt: skip


@pytest.mark.parametrize("threshold, answered_by", [(-100.0, "small"), (0.0, "large")])
def test_the_small_models_answer_stands_when_confident_and_the_large_one_answers_otherwise(
    tmp_path, small, backends, threshold, answered_by
):
    router = start_router(tmp_path, [small, backends[0]], "--cascade", f"{SMALL},{MODEL}",
                          "--cascade-threshold", str(threshold))  # fmt: skip
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=API_KEY, max_retries=0)
    expected = direct(small, SMALL) if answered_by == "small" else direct(backends[0], MODEL)
    try:
        assert "cascade" in [m.id for m in client.models.list().data]
        raw = client.chat.completions.with_raw_response.create(model="cascade", messages=QUESTION, max_tokens=12,
                                                               temperature=0)  # fmt: skip
        answer = raw.parse()
        assert raw.headers["x-tokenmill-cascade"] == answered_by
        assert answer.choices[0].message.content == expected
        assert answer.choices[0].logprobs is None  # asked of the small model, not by the client
        stream = client.chat.completions.create(model="cascade", messages=QUESTION, max_tokens=12, temperature=0,
                                                stream=True)  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
        assert router.metric("tokenmill_router:cascade_requests_total", answered_by=answered_by) == 2
        used = router.metric("tokenmill_router:cascade_small_tokens_total", outcome="used")
        discarded = router.metric("tokenmill_router:cascade_small_tokens_total", outcome="discarded")
        assert (used > 0, discarded > 0) == ((True, False) if answered_by == "small" else (False, True))
        with pytest.raises(openai.BadRequestError):  # a bad request is refused by the small model, not escalated
            client.chat.completions.create(model="cascade", messages=QUESTION, max_tokens=-1)
        assert router.metric("tokenmill_router:requests_total", backend=backends[0].url, status="400") == 0
    finally:
        router.stop()
