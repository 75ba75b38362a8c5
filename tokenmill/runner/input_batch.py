"""The model runner's own copy of each sequence it serves, kept up to date by the step's diffs.

The scheduler sends a sequence's data once (NewSequence) and then only what changed; nothing
here is shared with the scheduler, so the runner can live in another process (a tensor-parallel
worker). A sequence's seeded generator outlives its preemption, so that its samples after the
recompute continue the same random stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tokenmill.engine.messages import CachedSequence, NewSequence, SchedulerOutput
from tokenmill.lora.manager import LoRAManager
from tokenmill.sampling_params import SamplingParams


@dataclass(eq=False)
class RunnerSequence:
    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    block_table: list[int]
    num_computed_tokens: int
    generator: torch.Generator | None = None  # set when the sample has its own seed
    returns_prompt_rows: bool = False
    spec_token_ids: list[int] = field(default_factory=list)  # this step's proposals to verify
    spec_acceptance: float = 1.0  # its recent acceptance rate, which sets how many it is proposed
    num_draft_computed: int = 0  # a separate draft model: the tokens whose KV it has in its own pool
    lora_id: int = 0  # its adapter's id (0: none)
    lora_slot: int = -1  # the LoRA slot holding that adapter while the sequence lives

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class InputBatch:
    """seq id -> RunnerSequence for every sequence the runner serves; apply() gives a step's."""

    def __init__(self, device: torch.device, lora: LoRAManager | None = None) -> None:
        self.device = device
        self.lora = lora  # holds each sequence's adapter in a slot while the sequence is here
        self.seqs: dict[int, RunnerSequence] = {}
        # Kept across preemption, until finished: the random stream goes on where it was (a
        # recompute keeps the output tokens).
        self._generators: dict[int, torch.Generator] = {}

    def apply(self, sched: SchedulerOutput) -> list[tuple[RunnerSequence, int]]:
        """Folds the step's diffs in; returns the scheduled sequences with their token counts."""
        for seq_id in sched.finished_seq_ids:
            self._drop(seq_id)
            self._generators.pop(seq_id, None)
        for seq_id in sched.preempted_seq_ids:
            self._drop(seq_id)
        for new in sched.new_seqs:
            self.seqs[new.seq_id] = self._add(new)
        for cached in sched.cached_seqs:
            _update(self.seqs[cached.seq_id], cached)
        scheduled = [(self.seqs[seq_id], n) for seq_id, n in sched.num_scheduled_tokens.items()]
        for seq, _ in scheduled:
            seq.spec_token_ids = sched.spec_token_ids.get(seq.seq_id, [])
        return scheduled

    def _add(self, new: NewSequence) -> RunnerSequence:
        generator = None
        if new.seed is not None:
            generator = self._generators.get(new.seq_id)
            if generator is None:
                generator = self._generators[new.seq_id] = torch.Generator(self.device).manual_seed(new.seed)
        seq = RunnerSequence(new.seq_id, list(new.token_ids), new.num_prompt_tokens, new.params, list(new.block_ids),
                             new.num_computed_tokens, generator, new.returns_prompt_rows)
        if new.lora_request is not None and self.lora is not None:
            seq.lora_id, seq.lora_slot = new.lora_request.lora_int_id, self.lora.acquire(new.lora_request)
        return seq

    def _drop(self, seq_id: int) -> None:
        seq = self.seqs.pop(seq_id, None)
        if seq is not None and seq.lora_id and self.lora is not None:
            self.lora.release(seq.lora_id)


def _update(seq: RunnerSequence, cached: CachedSequence) -> None:
    seq.token_ids += cached.new_token_ids
    del seq.block_table[cached.table_start :]
    seq.block_table += cached.new_block_ids
    seq.num_computed_tokens = cached.num_computed_tokens
