"""Sequence: one sample of one request, as the scheduler and the model runner see it."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from tokenmill.outputs import Logprob
from tokenmill.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
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
    generator: torch.Generator | None = None  # set when the request has a seed
    # n > 1: the sample that computes the shared prompt; this one reuses its full blocks.
    prefix_source: Sequence | None = None
    cache_salt: str | None = None  # prefix caching: requests with different salts share no blocks
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    arrival_order: int = field(init=False, default_factory=lambda: next(_arrival_counter))
    # Prefix caching: the hash chain of the full blocks seen so far, how many of the table's blocks
    # are named in the cache, and how many prompt tokens the cache supplied at first admission.
    block_hashes: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0
    num_cached_tokens: int | None = None
    # Speculative decoding: tokens proposed for the next step, verified (and cleared) by it.
    spec_token_ids: list[int] = field(default_factory=list)
    spec_acceptance: float = 1.0  # its recent acceptance rate, which sets how many it is proposed
    hidden: torch.Tensor | None = None  # draft heads: the final hidden state that gave the last token
    num_draft_computed: int = 0  # a separate draft model: the tokens whose KV it has in its own pool

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def schedule_key(self) -> tuple[int, int]:
        """Ordering for admission and (reversed) for preemption: priority, then arrival."""
        return (self.priority, self.arrival_order)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
