"""The torch backend's sliding windows and attention sinks against attention written out by hand,
one query and one key at a time, over the whole context. The windowed batch's tables have holes
(a block of large garbage) where the KV manager freed blocks: they must never be read."""

import dataclasses

import pytest
import torch

from tests.kernels.paged_inputs import random_batch, random_kv
from tokenmill.attention.base import Sinks
from tokenmill.attention.torch_backend import TorchAttentionBackend

HEADS, KV_HEADS, HEAD_DIM, BLOCK = 4, 2, 16, 4
Q_LENS, SEQ_LENS = [1, 1, 5, 23], [3, 50, 29, 61]  # decode rows, then prefill chunks


def by_hand(q, sink_q, kv, tables, window, sinks):
    """Each query row against every key of its sequence: visible if causal and within the window
    or among the sinks; a sink's score uses the sink query."""
    out = torch.zeros_like(q)
    row, group = 0, HEADS // KV_HEADS
    for b, (q_len, seq_len) in enumerate(zip(Q_LENS, SEQ_LENS)):
        keys = torch.stack([kv.keys[tables[b, j // BLOCK], :, :, j % BLOCK] for j in range(seq_len)])  # [L, KVH, D]
        values = torch.stack([kv.values[tables[b, j // BLOCK], :, j % BLOCK] for j in range(seq_len)])
        for i in range(q_len):
            pos = seq_len - q_len + i
            for h in range(HEADS):
                k, v = keys[:, h // group], values[:, h // group]
                scores = torch.where(torch.arange(seq_len)[:, None] < sinks, sink_q[row, h] * k, q[row, h] * k)
                scores = scores.sum(-1) / HEAD_DIM**0.5
                seen = torch.tensor([j <= pos and (j > pos - window or j < sinks) for j in range(seq_len)])
                out[row, h] = torch.softmax(scores.masked_fill(~seen, -torch.inf), 0) @ v
            row += 1
    return out


def with_holes(batch, window, sinks, null_block):
    """The tables as the KV manager leaves them: blocks out of every query's reach are the null block."""
    tables = batch.block_tables.clone()
    for b, (q_len, seq_len) in enumerate(zip(Q_LENS, SEQ_LENS)):
        first = max(0, seq_len - q_len - window + 1) // BLOCK
        for j in range(-(-sinks // BLOCK), first):
            tables[b, j] = null_block
    return dataclasses.replace(batch, block_tables=tables, window=window, sinks=sinks)


@pytest.mark.parametrize("window,sinks", [(12, 0), (12, 4), (20, 6), (1, 3)])
def test_windowed_tables_with_holes_and_sinks_attend_as_by_hand(window, sinks):
    gen = torch.Generator().manual_seed(window + sinks)
    num_blocks = sum(-(-n // BLOCK) for n in SEQ_LENS) + 4
    kv = random_kv(num_blocks + 1, KV_HEADS, HEAD_DIM, BLOCK, gen)
    kv.keys[num_blocks], kv.values[num_blocks] = 1e4, 1e4  # the null block: garbage no query may read
    batch = random_batch(Q_LENS, SEQ_LENS, num_blocks, BLOCK, gen)
    q = torch.randn(sum(Q_LENS), HEADS, HEAD_DIM, generator=gen)
    sink_q = torch.randn(sum(Q_LENS), HEADS, HEAD_DIM, generator=gen) if sinks else q
    expected = by_hand(q, sink_q, kv, batch.block_tables, window, sinks)

    backend = TorchAttentionBackend(HEADS // KV_HEADS)
    holes = with_holes(batch, window, sinks, num_blocks)
    assert (holes.block_tables == num_blocks).any()  # some blocks were freed
    sink_arg = Sinks(sinks, sink_q) if sinks else None
    torch.testing.assert_close(backend.plan(holes).attend(q, kv, window, sink_arg), expected, rtol=1e-5, atol=1e-5)
    # The masking reference (one whole table, --disable-hybrid-kv-cache-manager) agrees.
    torch.testing.assert_close(backend.plan(batch).attend(q, kv, window, sink_arg), expected, rtol=1e-5, atol=1e-5)
