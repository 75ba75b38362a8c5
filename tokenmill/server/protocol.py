"""The OpenAI request bodies tokenmill accepts, parsed and checked into engine terms.

Field names and meanings are OpenAI's, plus vLLM's extra sampling fields (top_k, min_p,
repetition_penalty, min_tokens, ignore_eos, stop_token_ids, ...) for users switching over.
Every problem becomes a 400 naming the offending field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from tokenmill.kv_transfer.params import KVTransferParams
from tokenmill.sampling_params import MAX_LOGPROBS, SamplingParams, SamplingParamsError
from tokenmill.server.errors import bad_request
from tokenmill.server.json_depth import MAX_JSON_DEPTH, nests_deeper_than
from tokenmill.server.structured_fields import StructuredFields
from tokenmill.structured.grammar import GrammarCompiler
from tokenmill.structured.params import StructuredOutputsError, StructuredOutputsParams
from tokenmill.tool_calls.format import ToolCallFormat
from tokenmill.tool_calls.tools import ToolError, ToolUse

# The roles OpenAI's chat API defines ("function" is its older name for "tool").
ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]
MAX_LOGIT_BIAS = 100.0  # OpenAI's range: -100 (never) to 100 (always)
# Stop strings are searched in every sample's text after every token, and held back from a stream
# while they may still match: past these bounds a request would cost the front end more per token
# than the engine's step (OpenAI allows 4).
MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 1024

# The bounds each field has; they are the schema's (GET /openapi.json) and pydantic enforces them.
Positive = Annotated[int, Field(ge=1)]
LogprobCount = Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
TokenIdKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(StructuredFields):
    """Fields the two endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Positive | None = None
    temperature: Annotated[float, Field(ge=0.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Positive = 1  # at most the server's --max-n, checked below
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    seed: int | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    user: str | None = None
    # vLLM's extras
    top_k: Annotated[int, Field(ge=-1)] = 0
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None  # ids outside the vocabulary can never be sampled: ignored
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    cache_salt: str | None = None  # requests with different salts share no prefix-cache blocks
    logit_bias: dict[TokenIdKey, Bias] | None = None  # token id (as a string, JSON's keys) -> added to its logit
    kv_transfer_params: dict | None = None  # disaggregated serving (vLLM's): set by `tokenmill disagg-proxy`

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None, limits: RequestLimits,
                         tool_constraint: StructuredOutputsParams | None = None) -> SamplingParams:  # fmt: skip
        if not 1 <= self.n <= limits.max_n:
            raise bad_request(f"n must be in [1, {limits.max_n}], got {self.n}", "n")
        constraint = self._checked_constraint(limits.grammars, tool_constraint)
        try:
            return SamplingParams(
                n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, seed=self.seed, max_tokens=max_tokens,
                min_tokens=self.min_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids,
                ignore_eos=self.ignore_eos, include_stop_str_in_output=self.include_stop_str_in_output,
                logprobs=logprobs, skip_special_tokens=self.skip_special_tokens,
                logit_bias=self._logit_bias(limits.vocab_size), structured_outputs=constraint,
                kv_transfer=self._kv_transfer(),
            )  # fmt: skip
        except SamplingParamsError as exc:
            raise bad_request(str(exc), exc.param) from exc


    def _checked_constraint(self, grammars: GrammarCompiler, tool_constraint: StructuredOutputsParams | None,
                            ) -> StructuredOutputsParams | None:  # fmt: skip
        """The output constraint (the request's own, or the one its tools make), compiled here so that
        one the backend refuses is a 400 before the request reaches the engine."""
        found = self.output_constraint()
        if found is not None and tool_constraint is not None:
            raise bad_request(f"{found[1]} cannot be combined with tool calls; "
                              f'send tool_choice "none" or no output constraint', found[1])
        if tool_constraint is not None:
            found = tool_constraint, "tools"
        if found is None:
            return None
        constraint, field = found
        try:
            grammars.grammar(constraint, field)
        except StructuredOutputsError as exc:
            raise bad_request(str(exc), field) from exc
        return constraint

    def _kv_transfer(self) -> KVTransferParams | None:
        if self.kv_transfer_params is None:
            return None
        try:
            return KVTransferParams.from_json(self.kv_transfer_params)
        except ValueError as exc:
            raise bad_request(str(exc), "kv_transfer_params") from exc

    def _logit_bias(self, vocab_size: int) -> dict[int, float] | None:
        if not self.logit_bias:
            return None
        bias: dict[int, float] = {}
        for key, value in self.logit_bias.items():
            if not int(key) < vocab_size:
                raise bad_request(f"logit_bias key {key!r} is not a token id of the vocabulary (0..{vocab_size - 1})",
                                  "logit_bias")
            bias[int(key)] = value
        return bias


class LoadAdapterRequest(BaseModel):
    lora_name: str
    lora_path: str


class UnloadAdapterRequest(BaseModel):
    lora_name: str


@dataclass(frozen=True)
class RequestLimits:
    """What the server checks a request against beyond its fields' own ranges."""

    max_n: int
    vocab_size: int
    grammars: GrammarCompiler  # output constraints must compile


class CompletionRequest(_SamplingRequest):
    # One prompt: text, token ids (each below the vocabulary's size), or a list of one text; the
    # schema states what prompt_input checks, whose messages say more than a union's errors.
    prompt: (str | list[int] | list[str]) = Field(json_schema_extra={"anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1}]})
    max_tokens: Positive | None = 16  # OpenAI's default for completions
    logprobs: LogprobCount | None = None
    echo: bool = Field(False, json_schema_extra={"enum": [False]})  # refused below, by name
    best_of: Positive | None = None  # equal to n: every sample is returned

    def prompt_input(self) -> str | list[int]:
        """One prompt: a string or token ids (a list of one string is that string)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise bad_request("only one prompt per request is supported; send one request per prompt", "prompt")
            prompt = prompt[0]
        if not prompt:
            raise bad_request("prompt is empty", "prompt")
        return prompt

    def sampling_params(self, limits: RequestLimits) -> SamplingParams:
        if self.echo:
            raise bad_request("echo is not supported", "echo")
        if self.best_of is not None:
            if self.best_of > limits.max_n:
                raise bad_request(f"best_of must be in [1, {limits.max_n}], got {self.best_of}", "best_of")
            if self.best_of != self.n:  # as vLLM's V1 engine: every sample generated is returned
                raise bad_request(f"best_of must equal n ({self.n}): every sample is returned, none dropped",
                                  "best_of")
        return self._sampling_params(self.max_tokens, self.logprobs, limits)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: ChatRole  # anything else is refused by name, not rendered as text the model never saw in training
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Positive | None = None
    logprobs: bool = False
    top_logprobs: LogprobCount | None = None
    add_generation_prompt: bool = True
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True

    def tool_use(self) -> ToolUse | None:
        """What the model may do with the tools offered; None when it may call nothing."""
        try:
            return ToolUse.from_openai(self.tools, self.tool_choice, self.parallel_tool_calls)
        except ToolError as exc:
            raise bad_request(str(exc), exc.param) from exc

    def conversation(self, tool_format: ToolCallFormat, use: ToolUse | None) -> list[dict[str, str]]:
        messages = [{"role": m.role, "content": m.text(), "tool_calls": m.tool_calls} for m in self.messages]
        return tool_format.conversation(messages, use)

    def sampling_params(self, limits: RequestLimits, tool_constraint: StructuredOutputsParams | None = None,
                        ) -> SamplingParams:  # fmt: skip
        if self.top_logprobs and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(max_tokens, logprobs, limits, tool_constraint)


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """Bytes to a request model; invalid UTF-8, malformed or too deeply nested JSON and wrong types are 400s."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    too_deep = bad_request(f"the request body nests more than {MAX_JSON_DEPTH} levels of arrays and objects")
    if nests_deeper_than(raw):
        raise too_deep
    try:
        data = json.loads(text, parse_float=_json_number, parse_constant=_not_json)
    except RecursionError as exc:  # unclosed brackets, which the count above leaves to the parser
        raise too_deep from exc
    except ValueError as exc:  # malformed; NaN or Infinity; an integer of over 4,300 digits
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:  # strict: JSON's own types, as the schema states them (no "5" for 5, no true for 1)
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        errors = exc.errors()
        # Of a union's errors, the branch the value had the type of says what is wrong with it.
        first = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        where = ".".join(str(part) for part in first["loc"])
        raise bad_request(f"{where}: {first['msg']}", str(first["loc"][0]) if first["loc"] else None) from exc


def _json_number(literal: str) -> float | int:
    """A JSON number with a fraction or an exponent: an integer where it is one (2.0 is JSON
    Schema's integer 2, as some clients send counts), refused where it is not finite (1e400)."""
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal} is out of range")
    return int(value) if value.is_integer() else value


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")
