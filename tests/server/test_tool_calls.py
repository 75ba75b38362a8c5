"""Tool calling through the real openai client: "required" and a named function always give calls
whose arguments validate against the function's schema; "auto" gives text or valid calls; streamed
call deltas add up to the unstreamed call; tool results go back through the chat template."""

import json

import jsonschema
import openai
import pytest

from tests.live_server import MODEL
from tokenmill.model.default import default_model_path
from tokenmill.model.tokenizer import load_tokenizer

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city"], "additionalProperties": False}  # fmt: skip
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}}, "required": ["timezone"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
                                           "parameters": TIME}}]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


def _validate(calls) -> None:
    assert calls, "at least one call"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _streamed(client, **kwargs):
    """(content, {index: (id, name, arguments)}, finish_reason) from a streamed answer."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            if call.id is not None:
                calls[call.index] = (call.id, call.function.name, call.function.arguments or "")
            else:
                call_id, name, arguments = calls[call.index]
                calls[call.index] = (call_id, name, arguments + call.function.arguments)
        finish = choice.finish_reason or finish
    return content, calls, finish


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_required_and_named_calls_validate(client, tool_choice, seed):
    temperature = 0 if seed is None else 1.0
    result = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice,
                                            max_tokens=80, temperature=temperature, seed=seed)
    choice = result.choices[0]
    _validate(choice.message.tool_calls)
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    if tool_choice == NAMED:
        assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]


def test_parallel_tool_calls_false_gives_one_call(client):
    ask = [{"role": "user", "content": "Weather in Paris, Rome and Oslo, and the time in Tokyo?"}]
    for seed in range(3):
        result = client.chat.completions.create(model=MODEL, messages=ask, tools=TOOLS, tool_choice="required",
                                                parallel_tool_calls=False, max_tokens=80, temperature=1.0, seed=seed)
        assert len(result.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("seed", range(6))
def test_auto_gives_text_or_valid_calls(client, seed):
    result = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=60, temperature=1.0,
                                            seed=seed)
    message = result.choices[0].message
    if message.tool_calls:
        _validate(message.tool_calls)
        assert result.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content and "<tool_call>" not in message.content


@pytest.mark.parametrize("tool_choice", ["required", NAMED])
def test_streamed_deltas_add_up_to_the_unstreamed_call(client, tool_choice):
    kwargs = dict(messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=80, temperature=0)
    whole = client.chat.completions.create(model=MODEL, **kwargs).choices[0]
    content, calls, finish = _streamed(client, **kwargs)
    assert finish == whole.finish_reason == "tool_calls" and not content
    assert [(name, arguments) for _, name, arguments in calls.values()] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert len({call_id for call_id, _, _ in calls.values()}) == len(calls)


def test_tool_results_go_back_through_the_template(client):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=80, temperature=0).choices[0].message
    call = first.tool_calls[0]
    result = '{"temperature": 31, "unit": "celsius"}'
    history = ASK + [first.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": result}]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                            max_tokens=30, temperature=0)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    # the prompt the server built is the template over the call as the model writes it and the result
    written = json.dumps([{"name": call.function.name, "arguments": json.loads(call.function.arguments)}])
    tokenizer = load_tokenizer(default_model_path())
    expected = tokenizer.apply_chat_template(ASK + [{"role": "assistant", "content": f"<tool_call>{written}</tool_call>"},
                                                    {"role": "tool", "content": result}])
    assert answer.usage.prompt_tokens == len(tokenizer.encode(expected))


@pytest.mark.parametrize("kwargs, param", [
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools"),
    (dict(tools=[{"type": "retrieval"}]), "tools"),
    (dict(tools=TOOLS + TOOLS[:1]), "tools"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}],
          tool_choice="required"), "tools"),
    (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "response_format"),
])  # fmt: skip
def test_bad_tools_are_a_400_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, **kwargs)
    assert info.value.body["param"] == param
