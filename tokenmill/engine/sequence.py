"""Sequence: one sample of one request, as the scheduler sees it. Pure Python, no device objects:
the model runner keeps its own copy of what it needs (runner/input_batch.py)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from tokenmill.kv.block_hash import ExtraKeys
from tokenmill.lora.request import LoRARequest
from tokenmill.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING_FOR_GRAMMAR = "waiting_for_grammar"  # its output constraint is compiling: not yet scheduled
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_arrival_counter = itertools.count()


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n samples
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0  # lower runs first, as in vLLM
    seed: int | None = None  # this sample's own seed, when the request has one
    # n > 1: the sample that computes the shared prompt; this one reuses its full blocks.
    prefix_source: Sequence | None = None
    cache_salt: str | None = None  # prefix caching: requests with different salts share no blocks
    # The runner returns every prompt position's rows (prompt logprobs, hidden states): no prefix
    # cache hits, since cached positions are not computed.
    returns_prompt_rows: bool = False
    lora_request: LoRARequest | None = None  # the adapter the sequence runs with
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    arrival_order: int = field(init=False, default_factory=lambda: next(_arrival_counter))
    num_cached_tokens: int | None = None  # prompt tokens the prefix cache supplied at first admission
    spec_token_ids: list[int] = field(default_factory=list)  # proposals for the next step
    num_tokens_sent: int = 0  # tokens the model runner's copy holds (0: it holds none)

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def extra_keys(self) -> ExtraKeys:
        """What, beside its tokens, names this sequence's KV blocks in the prefix cache."""
        keys: list[str | int] = [] if self.cache_salt is None else [self.cache_salt]
        if self.lora_request is not None:  # two adapters never share KV; one adapter's requests do
            keys += ["lora", self.lora_request.lora_int_id]  # ends in an int: no salt alone reads so
        return tuple(keys)

    @property
    def schedule_key(self) -> tuple[int, int]:
        """Ordering for admission and (reversed) for preemption: priority, then arrival."""
        return (self.priority, self.arrival_order)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
