"""Turning a scheduled step into the model's flat input tensors and attention metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenmill.engine.scheduler import SchedulerOutput
from tokenmill.engine.sequence import Sequence
from tokenmill.model.attention import AttentionGroup, AttentionMetadata


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # [S] rows whose next token is sampled
    sampled_seqs: list[Sequence]  # the S sequences those rows belong to, in order


def prepare_input(
    sched: SchedulerOutput, block_size: int, num_queries_per_kv: int, device: torch.device
) -> ModelInput:
    # Decode rows (one new token) first, then prefill chunks: each becomes one attention group.
    order = sorted(range(len(sched.seqs)), key=lambda i: sched.num_new_tokens[i] > 1)
    seqs = [sched.seqs[i] for i in order]
    num_new = [sched.num_new_tokens[i] for i in order]
    num_decode = sum(1 for n in num_new if n == 1)

    input_ids: list[int] = []
    positions: list[int] = []
    logits_rows: list[int] = []
    sampled: list[Sequence] = []
    for seq, n in zip(seqs, num_new):
        start = seq.num_computed_tokens
        input_ids += seq.token_ids[start : start + n]
        positions += range(start, start + n)
        if start + n == seq.num_tokens:  # caught up: this step yields its next token
            logits_rows.append(len(input_ids) - 1)
            sampled.append(seq)

    groups = []
    row = 0
    for lo, hi in ((0, num_decode), (num_decode, len(seqs))):
        if hi > lo:
            group = _attention_group(seqs[lo:hi], num_new[lo:hi], row, block_size, num_queries_per_kv)
            groups.append(group)
            row = group.rows.stop
    pos = torch.tensor(positions, dtype=torch.long)
    slots = _slot_mapping(seqs, num_new, pos, block_size)
    return ModelInput(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=pos.to(device),
        attn=AttentionMetadata(slot_mapping=slots.to(device), groups=[_to(g, device) for g in groups]),
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sampled_seqs=sampled,
    )


def _slot_mapping(seqs: list[Sequence], num_new: list[int], positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """KV slot of every new token: its block (from the sequence's table) and offset in it."""
    tables = _padded_block_tables(seqs)
    owner = torch.repeat_interleave(torch.arange(len(seqs)), torch.tensor(num_new))
    blocks = tables[owner, positions // block_size]
    return blocks * block_size + positions % block_size


def _attention_group(
    seqs: list[Sequence], num_new: list[int], first_row: int, block_size: int, group_size: int
) -> AttentionGroup:
    starts = torch.tensor([s.num_computed_tokens for s in seqs])
    q_lens = torch.tensor(num_new)
    max_q = int(q_lens.max())
    tables = _padded_block_tables(seqs)
    # Query i of sequence b sits at position start_b + i and sees keys 0..that position.
    # Padding queries copy the sequence's last real query, so no row is fully masked.
    i = torch.minimum(torch.arange(max_q)[None, :], (q_lens - 1)[:, None])
    query_pos = starts[:, None] + i
    mask = torch.arange(tables.shape[1] * block_size)[None, None, :] <= query_pos[:, :, None]
    mask = mask.repeat_interleave(group_size, dim=1).unsqueeze(1)
    padded = bool((q_lens != max_q).any())
    offsets = torch.cumsum(q_lens, 0) - q_lens
    return AttentionGroup(
        rows=slice(first_row, first_row + int(q_lens.sum())),
        block_tables=tables,
        mask=mask,
        query_index=(offsets[:, None] + i).flatten() if padded else None,
        query_valid=(torch.arange(max_q)[None, :] < q_lens[:, None]).flatten() if padded else None,
        max_query_len=max_q,
    )


def _padded_block_tables(seqs: list[Sequence]) -> torch.Tensor:
    width = max(len(s.block_table) for s in seqs)
    return torch.tensor([s.block_table + [0] * (width - len(s.block_table)) for s in seqs], dtype=torch.long)


def _to(group: AttentionGroup, device: torch.device) -> AttentionGroup:
    if device.type == "cpu":
        return group
    move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return AttentionGroup(group.rows, move(group.block_tables), move(group.mask), move(group.query_index),
                          move(group.query_valid), group.max_query_len)
