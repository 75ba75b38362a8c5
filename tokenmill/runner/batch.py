"""Turning a scheduled step into the model's flat input tensors and its attention batch."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from tokenmill.attention.base import AttentionBatch
from tokenmill.runner.input_batch import RunnerSequence


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn_groups: list[AttentionBatch]  # one per KV group (kv/layout.py)
    logits_indices: torch.Tensor  # rows whose next token is sampled, or verified
    sampled_seqs: list[RunnerSequence]  # the sequences those rows belong to, in order
    num_logits: list[int]  # rows per sampled sequence: 1, or 1 + its proposals
    # Sequences that return prompt rows: seq id -> (first row, number of rows) of this step's chunk.
    prompt_rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    lora_slots: list[int] | None = None  # each row's LoRA slot (-1: none); None when no row has one

    @property
    def attn(self) -> AttentionBatch:
        """The attention batch of a model with one KV group (the captured steps' models)."""
        return self.attn_groups[0]


def prepare_input(scheduled: list[tuple[RunnerSequence, int]], block_size: int, device: torch.device,
                  group_windows: tuple[int | None, ...] = (None,), sinks: int = 0) -> ModelInput:  # fmt: skip
    """group_windows: the KV groups' spans; each sequence's block table interleaves their blocks.
    sinks: the first tokens the windowed groups keep."""
    # Decode rows (one new token) first, then prefill chunks: backends may treat them apart.
    scheduled = sorted(scheduled, key=lambda item: item[1] > 1)
    input_ids: list[int] = []
    logits_rows: list[int] = []
    sampled: list[RunnerSequence] = []
    num_logits: list[int] = []
    prompt_rows: dict[int, tuple[int, int]] = {}
    for seq, n in scheduled:
        start, proposed = seq.num_computed_tokens, seq.spec_token_ids  # scheduled whole, or cleared
        if seq.returns_prompt_rows and start < seq.num_prompt_tokens:
            prompt_rows[seq.seq_id] = (len(input_ids), min(n, seq.num_prompt_tokens - start))
        input_ids += seq.token_ids[start : start + n - len(proposed)] + proposed
        if start + n == seq.num_tokens + len(proposed):  # caught up: this step yields its next token(s)
            rows = 1 + len(proposed)  # a proposal's row checks it and the next one
            logits_rows += range(len(input_ids) - rows, len(input_ids))
            sampled.append(seq)
            num_logits.append(rows)

    starts, lengths = [s.num_computed_tokens for s, _ in scheduled], [n for _, n in scheduled]
    groups = len(group_windows)
    batches = [query_batch([s.block_table if groups == 1 else s.block_table[g::groups] for s, _ in scheduled],
                           starts, lengths, block_size, device, window, sinks if window else 0)
               for g, window in enumerate(group_windows)]  # fmt: skip
    return ModelInput(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=batches[0][1],
        attn_groups=[attn for attn, _ in batches],
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sampled_seqs=sampled,
        num_logits=num_logits,
        prompt_rows=prompt_rows,
        lora_slots=[seq.lora_slot for seq, n in scheduled for _ in range(n)]
        if any(seq.lora_slot >= 0 for seq, _ in scheduled) else None,
    )


def query_batch(block_tables: list[list[int]], starts: list[int], lengths: list[int], block_size: int,
                device: torch.device, window: int | None = None, sinks: int = 0) -> tuple[AttentionBatch, torch.Tensor]:
    """The attention batch, and the positions, of sequence i's queries at starts[i] ..
    starts[i] + lengths[i] - 1 over its block table (window: the tables hold only the blocks
    within that span of the queries, and those of the first `sinks` tokens). Single queries must
    come first (num_decode).
    Built in Python lists, one tensor per field: a decode step's few rows cost microseconds here,
    where a dozen small torch operations would cost a tenth of a millisecond."""
    positions = [p for start, n in zip(starts, lengths) for p in range(start, start + n)]
    owners = [table for table, n in zip(block_tables, lengths) for _ in range(n)]
    width = max(len(t) for t in block_tables)
    batch = AttentionBatch(
        slot_blocks=torch.tensor([table[p // block_size] for table, p in zip(owners, positions)], dtype=torch.long),
        slot_offsets=torch.tensor([p % block_size for p in positions], dtype=torch.long),
        query_start=torch.tensor(list(itertools.accumulate(lengths, initial=0)), dtype=torch.int32),
        seq_lens=torch.tensor([start + n for start, n in zip(starts, lengths)], dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int32),
        num_decode=sum(1 for n in lengths if n == 1),
        block_size=block_size,
        window=window,
        sinks=sinks,
    )
    return _to(batch, device), torch.tensor(positions, dtype=torch.long, device=device)


def _to(batch: AttentionBatch, device: torch.device) -> AttentionBatch:
    if device.type == "cpu":
        return batch
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return AttentionBatch(
        move(batch.slot_blocks), move(batch.slot_offsets), move(batch.query_start), move(batch.seq_lens), move(batch.block_tables),
        batch.num_decode, batch.block_size, batch.window, batch.sinks,
    )
