"""The OpenAI request bodies tokenmill accepts, parsed and checked into engine terms.

Field names and meanings are OpenAI's, plus vLLM's extra sampling fields (top_k, min_p,
repetition_penalty, min_tokens, ignore_eos, stop_token_ids, ...) for users switching over.
Every problem becomes a 400 naming the offending field.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tokenmill.sampling_params import MAX_LOGPROBS, SamplingParams, SamplingParamsError
from tokenmill.server.errors import bad_request


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
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

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        if self.n < 1:
            raise bad_request(f"n must be >= 1, got {self.n}", "n")
        try:
            return SamplingParams(
                n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, seed=self.seed, max_tokens=max_tokens,
                min_tokens=self.min_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids,
                ignore_eos=self.ignore_eos, include_stop_str_in_output=self.include_stop_str_in_output,
                logprobs=logprobs, skip_special_tokens=self.skip_special_tokens,
            )  # fmt: skip
        except SamplingParamsError as exc:
            raise bad_request(str(exc), exc.param) from exc


class CompletionRequest(_SamplingRequest):
    prompt: str | list[int] | list[str]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False

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

    def sampling_params(self) -> SamplingParams:
        if self.echo:
            raise bad_request("echo is not supported", "echo")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad_request(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}", "logprobs")
        return self._sampling_params(_max_tokens(self.max_tokens, "max_tokens"), self.logprobs)


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: str
    content: str | list[ContentPart] | None = None

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

    def conversation(self) -> list[dict[str, str]]:
        if not self.messages:
            raise bad_request("messages must not be empty", "messages")
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def sampling_params(self) -> SamplingParams:
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_LOGPROBS:
            raise bad_request(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {self.top_logprobs}", "top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if self.max_completion_tokens is not None:
            max_tokens = _max_tokens(self.max_completion_tokens, "max_completion_tokens")
        else:
            max_tokens = _max_tokens(self.max_tokens, "max_tokens")
        return self._sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


def _max_tokens(value: int | None, param: str) -> int | None:
    if value is not None and value < 1:
        raise bad_request(f"{param} must be >= 1, got {value}", param)
    return value


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """Bytes to a request model; invalid UTF-8, malformed JSON and wrong types are 400s."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise bad_request(f"{where}: {first['msg']}", str(first["loc"][0]) if first["loc"] else None) from exc
