"""Fifty JSON schemas of the kinds applications send (tests/structured/schemas.py): every output
for a schema the backend accepts parses and validates (jsonschema, with its format checks), greedy
and sampled, all fifty in one continuous batch; every schema it refuses is an error naming the
field and the backend's reason, before any token."""

import json

import jsonschema
import pytest

from tests.structured.schemas import ACCEPTED, REFUSED
from tokenmill import SamplingParams
from tokenmill.engine.engine import InvalidRequestError
from tokenmill.structured.params import StructuredOutputsParams


def validate(schema: dict, text: str) -> None:
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(json.loads(text))


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 1}])
def test_every_accepted_schema_gives_valid_json(llm, sampling):
    names = list(ACCEPTED)
    conversations = [[{"role": "user", "content": f"{ACCEPTED[name][0]} Answer in JSON."}] for name in names]
    params = [SamplingParams(max_tokens=400, structured_outputs=StructuredOutputsParams(json=ACCEPTED[name][1]),
                             **sampling) for name in names]  # fmt: skip
    outputs = llm.chat(conversations, params, use_tqdm=False)
    invalid = {}
    for name, output in zip(names, outputs):
        try:
            validate(ACCEPTED[name][1], output.outputs[0].text)
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            invalid[name] = (output.outputs[0].text, str(exc)[:200])
    assert invalid == {}


@pytest.mark.parametrize("name", REFUSED)
def test_a_refused_schema_is_an_error_with_the_backends_reason(llm, name):
    schema, reason = REFUSED[name]
    with pytest.raises(InvalidRequestError, match=reason) as info:
        llm.generate(["Answer in JSON."], SamplingParams(structured_outputs=StructuredOutputsParams(json=schema)),
                     use_tqdm=False)
    assert info.value.param == "structured_outputs"
