"""The fifty-schema corpus (tests/structured/schemas.py) through `tokenmill serve` and the openai
client: every accepted schema gives output that jsonschema validates, greedy and not streamed, and
sampled and streamed, all requests in flight together; every refused schema is a 400 naming
response_format. (Offline, every schema runs greedy and sampled: tests/structured/test_schema_corpus.py.)"""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from tests.live_server import MODEL
from tests.structured.schemas import ACCEPTED, REFUSED

MODES = [(False, 0.0), (True, 0.8)]


def _response_format(name: str, schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name.replace(" ", "_"), "schema": schema}}


def _answer(client, name: str, stream: bool, temperature: float) -> str:
    ask, schema = ACCEPTED[name]
    result = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"{ask} Answer in JSON."}], max_tokens=400,
        temperature=temperature, seed=1, stream=stream, response_format=_response_format(name, schema))
    if stream:
        return "".join(chunk.choices[0].delta.content or "" for chunk in result if chunk.choices)
    return result.choices[0].message.content


def test_every_accepted_schema_validates_streamed_and_not_greedy_and_sampled(client):
    jobs = [(name, stream, temperature) for name in ACCEPTED for stream, temperature in MODES]
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda job: _answer(client, *job), jobs))
    invalid = {}
    for (name, stream, temperature), text in zip(jobs, texts):
        schema = ACCEPTED[name][1]
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        try:
            validator.validate(json.loads(text))
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            invalid[(name, stream, temperature)] = (text[:200], str(exc)[:200])
    assert invalid == {}


@pytest.mark.parametrize("name", REFUSED)
def test_every_refused_schema_is_a_400_naming_response_format(client, name):
    schema, reason = REFUSED[name]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Answer in JSON."}],
                                       max_tokens=20, response_format=_response_format(name, schema))
    assert info.value.body["param"] == "response_format" and reason in info.value.body["message"]
