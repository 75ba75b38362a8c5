"""The OpenAI request bodies tokenmill accepts, parsed and checked into engine terms.

Field names and meanings are OpenAI's, plus vLLM's extra sampling fields (top_k, min_p,
repetition_penalty, min_tokens, ignore_eos, stop_token_ids, ...) for users switching over.
Every problem becomes a 400 naming the offending field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tokenmill.kv_transfer.params import KVTransferParams
from tokenmill.sampling_params import MAX_LOGPROBS, SamplingParams, SamplingParamsError
from tokenmill.server.errors import bad_request
from tokenmill.server.json_depth import MAX_JSON_DEPTH, nests_deeper_than
from tokenmill.server.structured_fields import StructuredFields
from tokenmill.structured.grammar import GrammarCompiler
from tokenmill.structured.params import StructuredOutputsError, StructuredOutputsParams
from tokenmill.tool_calls.format import ToolCallFormat
from tokenmill.tool_calls.tools import ToolError, ToolUse

# The roles OpenAI's chat API defines ("function" is its older name for "tool"); anything else is
# refused by name rather than rendered into the prompt as text the model never saw in training.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_LOGIT_BIAS = 100.0  # OpenAI's range: -100 (never) to 100 (always)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(StructuredFields):
    """Fields the two endpoints share."""

    model_config = ConfigDict(extra="ignore", strict=False)

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # vLLM's extras
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    cache_salt: str | None = None  # requests with different salts share no prefix-cache blocks
    logit_bias: dict[str, float] | None = None  # token id (as a string, JSON's keys) -> added to its logit
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
            token_id = int(key) if key.lstrip("-").isdigit() else None
            if token_id is None or not 0 <= token_id < vocab_size:
                raise bad_request(f"logit_bias key {key!r} is not a token id of the vocabulary (0..{vocab_size - 1})",
                                  "logit_bias")
            if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
                raise bad_request(f"logit_bias values must be in [-100, 100], got {value} for token {key}", "logit_bias")
            bias[token_id] = value
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
    prompt: str | list[int] | list[str]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None

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
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad_request(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}", "logprobs")
        if self.best_of is not None:
            if not 1 <= self.best_of <= limits.max_n:
                raise bad_request(f"best_of must be in [1, {limits.max_n}], got {self.best_of}", "best_of")
            if self.best_of != self.n:  # as vLLM's V1 engine: every sample generated is returned
                raise bad_request(f"best_of must equal n ({self.n}): every sample is returned, none dropped",
                                  "best_of")
        return self._sampling_params(_max_tokens(self.max_tokens, "max_tokens"), self.logprobs, limits)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
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
        if not self.messages:
            raise bad_request("messages must not be empty", "messages")
        for index, message in enumerate(self.messages):
            if message.role not in CHAT_ROLES:
                raise bad_request(f"messages[{index}].role {message.role!r} is not one of {', '.join(CHAT_ROLES)}",
                                  "messages")
        messages = [{"role": m.role, "content": m.text(), "tool_calls": m.tool_calls} for m in self.messages]
        return tool_format.conversation(messages, use)

    def sampling_params(self, limits: RequestLimits, tool_constraint: StructuredOutputsParams | None = None,
                        ) -> SamplingParams:  # fmt: skip
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_LOGPROBS:
            raise bad_request(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {self.top_logprobs}", "top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if self.max_completion_tokens is not None:
            max_tokens = _max_tokens(self.max_completion_tokens, "max_completion_tokens")
        else:
            max_tokens = _max_tokens(self.max_tokens, "max_tokens")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._sampling_params(max_tokens, logprobs, limits, tool_constraint)


def _max_tokens(value: int | None, param: str) -> int | None:
    if value is not None and value < 1:
        raise bad_request(f"{param} must be >= 1, got {value}", param)
    return value


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
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # unclosed brackets, which the count above leaves to the parser
        raise too_deep from exc
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise bad_request(f"{where}: {first['msg']}", str(first["loc"][0]) if first["loc"] else None) from exc
