"""Structured outputs through the real openai client: response_format, vLLM's guided fields and
structured_outputs, parsed objects, and a 400 naming the field for what the backend refuses."""

import json
import re

import jsonschema
import openai
import pydantic
import pytest

from tests.live_server import MODEL

QUESTION = [{"role": "user", "content": "Name a city and its country, as JSON."}]
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                         "country": {"type": "string", "maxLength": 30}},
        "required": ["city", "country"], "additionalProperties": False}


class City(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)


def test_parse_returns_a_pydantic_object(client):
    result = client.beta.chat.completions.parse(model=MODEL, messages=QUESTION, response_format=City, max_tokens=60,
                                                temperature=0)
    assert isinstance(result.choices[0].message.parsed, City)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_format_validates_streamed_and_not(client, stream):
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}}
    result = client.chat.completions.create(model=MODEL, messages=QUESTION, response_format=response_format,
                                            max_tokens=60, temperature=0.8, seed=5, stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
    else:
        text = result.choices[0].message.content
    jsonschema.validate(json.loads(text), CITY)


def test_guided_fields_on_completions(client):
    choice = client.completions.create(model=MODEL, prompt="The best fruit is", max_tokens=10, temperature=0,
                                       extra_body={"guided_choice": ["apple", "pear"]})
    assert choice.choices[0].text in ("apple", "pear")
    regex = client.completions.create(model=MODEL, prompt="A phone number:", max_tokens=20, temperature=0,
                                      extra_body={"guided_regex": r"\(\d{3}\) \d{3}-\d{4}"})
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", regex.choices[0].text)
    structured = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=60, temperature=0,
                                                extra_body={"structured_outputs": {"json": CITY}})
    jsonschema.validate(json.loads(structured.choices[0].message.content), CITY)


@pytest.mark.parametrize("extra, field", [({"guided_regex": "a(b"}, "guided_regex"),
                                          ({"guided_json": {"type": "frobnicate"}}, "guided_json"),
                                          ({"structured_outputs": {"regex": "x", "choice": ["y"]}},
                                           "structured_outputs"),
                                          ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice")])
def test_a_refused_constraint_is_a_400_naming_the_field(client, extra, field):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5, extra_body=extra)
    assert info.value.body["param"] == field


def test_compile_and_mask_times_are_in_the_metrics(client, server):
    client.completions.create(model=MODEL, prompt="The best fruit is", max_tokens=10, temperature=0,
                              extra_body={"guided_choice": ["apple", "pear", "fig"]})
    server.wait_idle()
    steps = server.metric("tokenmill:structured_output_masked_steps_total")
    mask = server.metric("tokenmill:structured_output_mask_seconds_total")
    assert steps >= 1 and 0 < mask < steps  # each step's mask well under a second
    assert server.metric("tokenmill:structured_output_compile_seconds_total") > 0
