"""Turning a scheduled step into the model's flat input tensors and its attention batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.engine.scheduler import SchedulerOutput
from tokenmill.engine.sequence import Sequence
from tokenmill.model.attention import AttentionBatch


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn: AttentionBatch
    logits_indices: torch.Tensor  # rows whose next token is sampled, or verified
    sampled_seqs: list[Sequence]  # the sequences those rows belong to, in order
    num_logits: list[int]  # rows per sampled sequence: 1, or 1 + its proposals


def prepare_input(sched: SchedulerOutput, block_size: int, device: torch.device) -> ModelInput:
    # Decode rows (one new token) first, then prefill chunks: backends may treat them apart.
    order = sorted(range(len(sched.seqs)), key=lambda i: sched.num_new_tokens[i] > 1)
    seqs = [sched.seqs[i] for i in order]
    num_new = [sched.num_new_tokens[i] for i in order]

    input_ids: list[int] = []
    positions: list[int] = []
    logits_rows: list[int] = []
    sampled: list[Sequence] = []
    num_logits: list[int] = []
    for seq, n in zip(seqs, num_new):
        start, proposed = seq.num_computed_tokens, seq.spec_token_ids  # scheduled whole, or cleared
        input_ids += seq.token_ids[start : start + n - len(proposed)] + proposed
        positions += range(start, start + n)
        if start + n == seq.num_tokens + len(proposed):  # caught up: this step yields its next token(s)
            rows = 1 + len(proposed)  # a proposal's row checks it and the next one
            logits_rows += range(len(input_ids) - rows, len(input_ids))
            sampled.append(seq)
            num_logits.append(rows)

    pos = torch.tensor(positions, dtype=torch.long)
    tables = _padded_block_tables(seqs)
    q_lens = torch.tensor(num_new, dtype=torch.int32)
    slot_blocks, slot_offsets = _slots(tables, q_lens, pos, block_size)
    attn = AttentionBatch(
        slot_blocks=slot_blocks,
        slot_offsets=slot_offsets,
        query_start=torch.nn.functional.pad(torch.cumsum(q_lens, 0, dtype=torch.int32), (1, 0)),
        seq_lens=torch.tensor([s.num_computed_tokens + n for s, n in zip(seqs, num_new)], dtype=torch.int32),
        block_tables=tables,
        num_decode=sum(1 for n in num_new if n == 1),
        block_size=block_size,
    )
    return ModelInput(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=pos.to(device),
        attn=_to(attn, device),
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sampled_seqs=sampled,
        num_logits=num_logits,
    )


def _slots(
    tables: torch.Tensor, q_lens: torch.Tensor, positions: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """KV slot of every new token: its block (from the sequence's table) and offset in it."""
    owner = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens)
    return tables[owner, positions // block_size].long(), positions % block_size


def _padded_block_tables(seqs: list[Sequence]) -> torch.Tensor:
    width = max(len(s.block_table) for s in seqs)
    return torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs], dtype=torch.int32)


def _to(batch: AttentionBatch, device: torch.device) -> AttentionBatch:
    if device.type == "cpu":
        return batch
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return AttentionBatch(
        move(batch.slot_blocks), move(batch.slot_offsets), move(batch.query_start), move(batch.seq_lens), move(batch.block_tables),
        batch.num_decode, batch.block_size,
    )
