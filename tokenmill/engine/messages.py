"""The step's contracts: what the scheduler sends the model runner, what comes back, and what
the engine core sends its front end.

A sequence's full data crosses once (NewSequence, also after a preemption); after that only what
changed (CachedSequence): tokens it gained, its table's entries from the first changed one, its
computed count. Proposed tokens and the ids of sequences that ended or were preempted ride along.
These messages hold ids and plain values only (and the step's grammar bitmask, a small int32
tensor), so that a tensor-parallel driver can send them to its workers as they are; the runner answers with token ids, logprobs and the rows asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenmill.outputs import Logprob, RequestMetrics
from tokenmill.kv_transfer.params import KVTransferParams
from tokenmill.lora.request import LoRARequest
from tokenmill.sampling_params import SamplingParams

if TYPE_CHECKING:  # the scheduler's side of these messages runs without torch
    import torch


@dataclass(frozen=True)
class NewSequence:
    seq_id: int
    token_ids: list[int]  # the prompt, and the outputs of a sequence that was preempted
    num_prompt_tokens: int
    params: SamplingParams
    seed: int | None  # the sample's own seed (None: the engine's generator)
    block_ids: list[int]
    num_computed_tokens: int
    returns_prompt_rows: bool = False  # the runner returns its prompt positions' logprobs and hidden states
    lora_request: LoRARequest | None = None  # the adapter it runs with


@dataclass(frozen=True)
class CachedSequence:
    seq_id: int
    new_token_ids: list[int]  # tokens the sequence gained since it was last scheduled
    table_start: int  # the runner's block table becomes table[:table_start] + new_block_ids
    new_block_ids: list[int]
    num_computed_tokens: int


@dataclass(frozen=True)
class GrammarBitmask:
    """Structured outputs' masks for one step: row i of `bits` (int32 words, bit t for token t)
    holds the tokens sequence seq_ids[i] may sample next."""

    seq_ids: list[int]
    bits: torch.Tensor


@dataclass(frozen=True)
class SchedulerOutput:
    new_seqs: list[NewSequence] = field(default_factory=list)
    cached_seqs: list[CachedSequence] = field(default_factory=list)
    num_scheduled_tokens: dict[int, int] = field(default_factory=dict)  # seq id -> tokens, in schedule order
    spec_token_ids: dict[int, list[int]] = field(default_factory=dict)  # proposals scheduled for verification
    finished_seq_ids: list[int] = field(default_factory=list)  # ended since the last step: forget them
    preempted_seq_ids: list[int] = field(default_factory=list)  # freed this step: forget them until resent
    grammar_bitmask: GrammarBitmask | None = None  # set by the engine for constrained sequences that sample

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


@dataclass(frozen=True)
class SpecDecodeCounts:
    """One step's speculative tokens: proposed and verified, and of those accepted."""

    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0


@dataclass(frozen=True)
class RunnerOutput:
    # seq id -> the tokens it produced: one, or with proposals the accepted ones and one more
    sampled_token_ids: dict[int, list[int]] = field(default_factory=dict)
    logprobs: dict[int, dict[int, Logprob]] = field(default_factory=dict)  # the first token's, where asked
    spec_token_ids: dict[int, list[int]] = field(default_factory=dict)  # proposals for the next step
    spec_counts: SpecDecodeCounts = SpecDecodeCounts()
    # Sequences that return prompt rows: this step's chunk of [positions, V] log-probabilities of
    # the next token, and of [positions, H] final hidden states.
    prompt_logprobs: dict[int, torch.Tensor] = field(default_factory=dict)
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class SampleOutput:
    """What one sample gained in a step: token ids only; the front end turns them into text."""

    index: int
    new_token_ids: list[int]
    new_logprobs: list[dict[int, Logprob]] | None  # one per new token, where asked
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass
class EngineOutput:
    request_id: str
    samples: list[SampleOutput]  # the samples that gained tokens or ended this step
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int
    # Where asked (add_request's returns_prompt_rows), with the finished output: [T - 1, V] log
    # probabilities of each next prompt token and [T, H] final hidden states of the prompt.
    prompt_logprobs: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    kv_transfer_params: KVTransferParams | None = None  # a prefill instance's: where its prompt's KV waits
