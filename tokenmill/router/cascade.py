"""A model cascade: requests for the cascade's name go to the small model first; its answer is
returned when the model was confident (the mean log-probability of its tokens at or above the
threshold), and otherwise the large model answers instead.

The small model's answer is asked whole, with its token log-probabilities (removed again unless the
client asked for them): a streamed request that the small model answers is replayed as a stream;
one that escalates streams from the large model as it comes. The cost is the small model's time
on escalated requests; the saving is the large model's tokens on the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.responses import Response

from tokenmill.router.cache.replay import replay_response
from tokenmill.server.errors import APIError

CASCADE_HEADER = "x-tokenmill-cascade"
# A malformed request: the large model would refuse it too. Anything else the small model answers
# (its context or token limits, 429, 5xx) sends the request on to the large one.
_REQUEST_ERRORS = (400, 401, 403, 422)


@dataclass(frozen=True)
class CascadeConfig:
    small: str  # model names, as the backends serve them
    large: str
    name: str = "cascade"  # the model name that clients ask for
    min_mean_logprob: float = -0.5  # the small model's answer stands at or above this mean per token

    def __post_init__(self) -> None:
        if self.name in (self.small, self.large):
            raise ValueError(f"the cascade's name {self.name!r} must differ from its models' names")

    @classmethod
    def parse(cls, pair: str, **options) -> CascadeConfig:
        small, _, large = pair.partition(",")
        if not small or not large or "," in large:
            raise ValueError(f"--cascade takes two model names, small,large; got {pair!r}")
        return cls(small.strip(), large.strip(), **options)


@dataclass(frozen=True)
class CascadeOutcome:
    answered_by: str  # "small" or "large"
    small_tokens: int  # prompt and completion tokens the small model processed
    small_answer: dict | None = None  # the answer's body, when the small model's stands


Forward = Callable[[dict, bool], Awaitable[Response]]  # (body, whether its answer is the final one)


async def cascade(config: CascadeConfig, body: dict, forward: Forward) -> tuple[Response, CascadeOutcome]:
    """The answer to a request for the cascade, from whichever model gives it."""
    try:
        small: Response | None = await forward(_as_small(config, body), False)
    except APIError:  # no small backend up: the large model answers alone
        small = None
    if small is not None and small.status_code in _REQUEST_ERRORS:
        return small, CascadeOutcome("small", 0)  # the request itself is wrong, for either model
    parsed = _json(small) if small is not None and small.status_code == 200 else None
    mean = mean_logprob(parsed) if parsed is not None else None
    tokens = _tokens(parsed)
    if mean is not None and mean >= config.min_mean_logprob:
        answer = _without_unasked_logprobs(parsed, body)
        headers = {CASCADE_HEADER: "small", "x-tokenmill-cascade-mean-logprob": f"{mean:.4f}"}
        return replay_response(answer, body, headers), CascadeOutcome("small", tokens, answer)
    large = await forward({**body, "model": config.large}, True)
    large.headers[CASCADE_HEADER] = "large"
    return large, CascadeOutcome("large", tokens)


def mean_logprob(answer: dict) -> float | None:
    """The mean log-probability of every generated token over the answer's choices."""
    values = []
    for choice in answer.get("choices") or []:
        logprobs = choice.get("logprobs") or {}
        if "content" in logprobs:  # chat
            values += [entry["logprob"] for entry in logprobs["content"] or []]
        else:
            values += [v for v in logprobs.get("token_logprobs") or [] if v is not None]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _as_small(config: CascadeConfig, body: dict) -> dict:
    small = {**body, "model": config.small, "stream": False}
    small.pop("stream_options", None)
    if "messages" in body:
        small["logprobs"] = True
    elif body.get("logprobs") is None:
        small["logprobs"] = 0  # the sampled tokens' own log-probabilities, no alternatives
    return small


def _without_unasked_logprobs(answer: dict, body: dict) -> dict:
    asked = body.get("logprobs")
    if asked is not None and asked is not False:  # completions' logprobs 0 is asked for
        return answer
    return {**answer, "choices": [{**c, "logprobs": None} for c in answer.get("choices", [])]}


def _json(response: Response) -> dict | None:
    try:
        parsed = json.loads(response.body)
    except (ValueError, AttributeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _tokens(answer: dict | None) -> int:
    usage = (answer or {}).get("usage") or {}
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
