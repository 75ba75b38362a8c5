"""Constrained decoding in the offline engine: every output follows its constraint, checked by an
independent judge (jsonschema, re.fullmatch, the choice list), where the same request without
the constraint does not; constrained and free requests share a batch without changing the free ones."""

import gc
import json
import re
import threading

import jsonschema
import pytest

from tokenmill import LLM, SamplingParams
from tokenmill.engine.engine import InvalidRequestError
from tokenmill.structured.grammar import GrammarCompiler
from tokenmill.structured.params import StructuredOutputsParams

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0,
                                                                        "maximum": 120},
                   "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}},
    "required": ["name", "age", "colors"],
    "additionalProperties": False,
}
PROMPT = "Describe a person."
DATE = r"\d{4}-\d{2}-\d{2}"


def generate(llm, prompt: str, constraint: StructuredOutputsParams | None, **params) -> str:
    params = SamplingParams(**{"max_tokens": 120, "temperature": 0, "structured_outputs": constraint, **params})
    return llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.9, "seed": 3}])
def test_json_schema_outputs_validate(llm, sampling):
    text = generate(llm, PROMPT, StructuredOutputsParams(json=PERSON), **sampling)
    jsonschema.validate(json.loads(text), PERSON)
    free = generate(llm, PROMPT, None, **sampling)
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free), PERSON)


def test_regex_choice_and_grammar_constrain_exactly(llm):
    date = generate(llm, "When did the war end?", StructuredOutputsParams(regex=DATE))
    assert re.fullmatch(DATE, date)
    assert not re.fullmatch(DATE, generate(llm, "When did the war end?", None))
    choices = ("alpha", "beta", "gamma")
    assert generate(llm, "Is the sky blue? Answer yes or no.", StructuredOutputsParams(choice=choices)) in choices
    lark = 'start: "(" num " " op " " num ")"\nop: "+" | "-"\nnum: /[0-9]{1,3}/'
    expression = generate(llm, "Write an arithmetic expression.", StructuredOutputsParams(grammar=lark))
    assert re.fullmatch(r"\([0-9]{1,3} [+-] [0-9]{1,3}\)", expression)


def test_any_json_object(llm):
    assert isinstance(json.loads(generate(llm, PROMPT, StructuredOutputsParams(json_object=True))), dict)


def test_constrained_and_free_requests_share_a_batch(llm):
    free = SamplingParams(max_tokens=24, temperature=0)
    alone = llm.generate(["The capital of France is"], free, use_tqdm=False)[0].outputs[0].text
    constrained = SamplingParams(max_tokens=80, temperature=0, structured_outputs=StructuredOutputsParams(json=PERSON))
    outputs = llm.generate(["The capital of France is", PROMPT, "Hello"], [free, constrained, free], use_tqdm=False)
    assert outputs[0].outputs[0].text == alone
    jsonschema.validate(json.loads(outputs[1].outputs[0].text), PERSON)


@pytest.mark.parametrize("constraint", [StructuredOutputsParams(regex="a(b"),
                                        StructuredOutputsParams(json={"type": "frobnicate"}),
                                        StructuredOutputsParams(grammar="start: undefined_rule")])
def test_a_constraint_the_backend_refuses_is_an_error_before_any_token(llm, constraint):
    with pytest.raises(InvalidRequestError) as info:
        llm.generate([PROMPT], SamplingParams(structured_outputs=constraint), use_tqdm=False)
    assert info.value.param == "structured_outputs"


def test_exactly_one_constraint():
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(regex="a", choice=("b",))
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams()


def test_constrained_requests_survive_preemption_unchanged_and_free_every_block():
    """A pool too small for every sequence at once: constrained sequences are preempted and
    recomputed, keeping their grammar state; each output equals the request run alone."""
    small = LLM(dtype="float32", quantization="none", kv_cache_memory=6 * 2**20, max_num_batched_tokens=64,
                enable_prefix_caching=False)
    try:
        params = SamplingParams(max_tokens=60, temperature=0, structured_outputs=StructuredOutputsParams(json=PERSON))
        prompts = [f"Describe person number {i}." for i in range(6)]
        alone = [small.generate([p], params, use_tqdm=False)[0].outputs[0].text for p in prompts]
        together = [out.outputs[0].text for out in small.generate(prompts, params, use_tqdm=False)]
        assert together == alone and small.engine.stats().num_preemptions > 0
        manager = small.engine.kv_manager
        assert manager.num_free_blocks == manager.num_blocks
    finally:
        del small
        gc.collect()


def test_n_samples_with_a_seed_each_follow_the_schema(llm):
    params = SamplingParams(n=3, max_tokens=80, temperature=1.0, seed=11,
                            structured_outputs=StructuredOutputsParams(json=PERSON))
    first = [c.text for c in llm.generate([PROMPT], params, use_tqdm=False)[0].outputs]
    for text in first:
        jsonschema.validate(json.loads(text), PERSON)
    assert [c.text for c in llm.generate([PROMPT], params, use_tqdm=False)[0].outputs] == first


def test_a_compiling_grammar_holds_up_only_its_own_request(llm, monkeypatch):
    """The grammar compiles in the manager's thread: held there, its request waits unscheduled
    while a free request runs to the end; released, the constrained one runs and validates."""
    release = threading.Event()
    build = GrammarCompiler.matcher

    def held(compiler, params):
        assert release.wait(60)
        return build(compiler, params)

    monkeypatch.setattr(GrammarCompiler, "matcher", held)
    engine, tokenizer = llm.engine, llm.engine.tokenizer
    schema = {**PERSON, "title": "held"}  # not compiled before, whatever ran first
    constrained = engine.add_request(tokenizer.encode(PROMPT), SamplingParams(
        max_tokens=80, temperature=0, structured_outputs=StructuredOutputsParams(json=schema)))
    free = engine.add_request(tokenizer.encode("The capital of France is"), SamplingParams(max_tokens=8))
    tokens: dict[str, list[int]] = {constrained: [], free: []}
    finished: set[str] = set()

    def step() -> None:
        for out in engine.step():
            tokens[out.request_id] += [t for sample in out.samples for t in sample.new_token_ids]
            if out.finished:
                finished.add(out.request_id)

    while free not in finished:
        step()
    assert engine.requests[constrained].metrics.first_scheduled_time is None and not tokens[constrained]
    release.set()
    while constrained not in finished:
        step()
    jsonschema.validate(json.loads(tokenizer.decode(tokens[constrained])), schema)


def test_properties_come_in_the_schemas_order(llm):
    """Not alphabetical: a schema that puts its reasoning before its answer gets them in that order."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string", "maxLength": 60},
                                               "answer": {"type": "integer", "minimum": 0, "maximum": 100}},
              "required": ["reasoning", "answer"], "additionalProperties": False}  # fmt: skip
    text = generate(llm, "What is 6 times 7?", StructuredOutputsParams(json=schema))
    assert list(json.loads(text)) == ["reasoning", "answer"]
