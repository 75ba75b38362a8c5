"""The int8 KV cache: quantizing on write, and attention over int8 blocks in every path (the C
kernel's AVX-512 and portable code, the torch backend) against attention in float64."""

import math

import pytest
import torch

from tests.kernels.paged_inputs import HAS_AVX512, NATIVE, dequantized, quantized, random_batch, random_kv, strided_q
from tokenmill.attention.cpu_backend import CpuAttentionBackend
from tokenmill.kernels.paged_attention import write_kv
from tokenmill.attention.base import AttentionBackend, KVCacheView, kv_block_views
from tokenmill.quant.tensor import symmetric_int8
from tokenmill.attention.torch_backend import TorchAttentionBackend

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16  # the default model's attention
# Decode rows at lengths around block edges and up to 700 keys, then two prefill chunks: a whole
# prompt, and a chunk that continues after 236 cached tokens.
Q_LENS = [1, 1, 1, 1, 1, 1, 37, 64]
SEQ_LENS = [1, 16, 17, 130, 401, 700, 37, 300]


@pytest.fixture(params=["c_avx512", "c_portable", "torch"])
def backend(request) -> AttentionBackend:
    if request.param == "torch":
        return TorchAttentionBackend(HEADS // KV_HEADS)
    if NATIVE is None:
        pytest.skip("no C compiler for the cpu attention kernel")
    if request.param == "c_portable":
        return CpuAttentionBackend(request.getfixturevalue("portable_kernels"))
    if not HAS_AVX512:
        pytest.skip("the CPU has no AVX-512")
    return CpuAttentionBackend(NATIVE)


def test_quantizing_rounds_each_element_to_the_nearest_step_of_its_tokens_scale():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, KV_HEADS, HEAD_DIM, generator=gen) * torch.rand(500, KV_HEADS, 1, generator=gen) * 20
    x[0, 1] = 0
    q, scales = symmetric_int8(x)
    assert q.dtype == torch.int8 and scales.shape == (500, KV_HEADS)
    assert torch.equal(scales, x.abs().amax(dim=-1) / 127)
    assert torch.equal(q[0, 1], torch.zeros(HEAD_DIM, dtype=torch.int8)) and scales[0, 1] == 0
    assert (q.abs().amax(dim=-1)[scales > 0] == 127).all()  # the largest element uses the full range
    # Rounding is off by at most half a step; the float32 product scale * int8 adds under an ulp of x.
    error = (q.float() * scales.unsqueeze(-1) - x).abs()
    assert (error <= scales.unsqueeze(-1) * (0.5 + 1e-5)).all()


@pytest.mark.skipif(NATIVE is None, reason="no C compiler for the cpu attention kernel")
@pytest.mark.parametrize("dtype", [torch.int8, torch.float32])
def test_the_c_write_stores_the_same_bits_as_the_torch_write(dtype):
    gen = torch.Generator().manual_seed(1)
    num_blocks, num_tokens = 40, 300
    # k and v as the model passes them: views into the fused q/k/v projection, rows strided.
    qkv = torch.randn(num_tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=gen) * 4
    qkv[7] = 0
    k = qkv[:, HEADS * HEAD_DIM : (HEADS + KV_HEADS) * HEAD_DIM].view(-1, KV_HEADS, HEAD_DIM)
    v = qkv[:, (HEADS + KV_HEADS) * HEAD_DIM :].view(-1, KV_HEADS, HEAD_DIM)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=gen)[:num_tokens]
    pools = [torch.zeros(2, num_blocks, KV_HEADS * HEAD_DIM * BLOCK_SIZE, dtype=dtype) for _ in range(2)]
    scales = [torch.zeros(2, num_blocks, KV_HEADS * BLOCK_SIZE) if dtype == torch.int8 else None for _ in range(2)]
    by_torch, by_c = (kv_block_views(p, s, BLOCK_SIZE, KV_HEADS, HEAD_DIM) for p, s in zip(pools, scales))

    by_torch.write(k, v, slots // BLOCK_SIZE, slots % BLOCK_SIZE)
    write_kv(NATIVE, by_c, k, v, slots // BLOCK_SIZE, slots % BLOCK_SIZE)
    assert torch.equal(pools[0], pools[1])
    if dtype == torch.int8:
        assert torch.equal(scales[0], scales[1]) and pools[0].abs().amax() == 127  # the write reached the pool
    else:
        torch.testing.assert_close(pools[0].abs().sum(), k.abs().sum() + v.abs().sum())  # every value landed


def test_int8_attention_matches_float64_attention(backend):
    gen = torch.Generator().manual_seed(2)
    num_blocks = sum(-(-n // BLOCK_SIZE) for n in SEQ_LENS) + 7
    original = random_kv(num_blocks, KV_HEADS, HEAD_DIM, BLOCK_SIZE, gen)
    int8 = quantized(original)
    batch = random_batch(Q_LENS, SEQ_LENS, num_blocks, BLOCK_SIZE, gen)
    q = strided_q(sum(Q_LENS), HEADS, KV_HEADS, HEAD_DIM, gen)

    actual = backend.plan(batch).attend(q, int8).double()
    # Against the int8 cache's own values, a backend adds only float32 rounding.
    torch.testing.assert_close(actual, attention_float64(q, dequantized(int8), batch), rtol=1e-5, atol=1e-5)
    # Against the K and V before quantizing, it is off by no more than quantizing allows.
    original64 = KVCacheView(original.keys.double(), original.values.double())
    error = (actual - attention_float64(q, original64, batch)).abs()
    assert (error <= quantization_bound(q, original64, int8, batch) + 1e-5).all()


def attention_float64(q: torch.Tensor, kv: KVCacheView, batch) -> torch.Tensor:
    """Causal GQA attention in float64, one sequence at a time; [T, H, D]."""
    out = []
    for s in range(len(batch.seq_lens)):
        rows, keys, values = _sequence(q, kv, batch, s)
        scores = torch.einsum("ihd,thd->iht", rows, keys) * HEAD_DIM**-0.5
        weights = scores.masked_fill(~_visible(rows, keys)[:, None, :], -math.inf).softmax(-1)
        out.append(torch.einsum("iht,thd->ihd", weights, values))
    return torch.cat(out)


def quantization_bound(q: torch.Tensor, original: KVCacheView, int8: KVCacheView, batch) -> torch.Tensor:
    """How far attention over an int8 cache may land from attention over the K and V it holds; [T, H, D].

    Each int8 element is within half its token's scale of the original. So a score (q . k / sqrt(D))
    moves by at most delta = |q|_1 / sqrt(D) * max key scale / 2, each softmax weight by a factor
    within e^(+-2 delta), and the output, a weighted mean of values, by at most (e^(2 delta) - 1)
    times half the values' range; the values' own error, averaged by the weights, adds at most half
    the largest value scale. (Maxima over the sequence's keys: an upper bound for every row.)"""
    assert int8.key_scales is not None and int8.value_scales is not None
    scales = KVCacheView(int8.key_scales.unsqueeze(2).double(), int8.value_scales.unsqueeze(3).double())
    bounds = []
    for s in range(len(batch.seq_lens)):
        rows, keys, values = _sequence(q, original, batch, s)
        _, key_scales, value_scales = _sequence(q, scales, batch, s)  # [L, H, 1] each
        delta = rows.abs().sum(-1) * HEAD_DIM**-0.5 * key_scales.amax(0).squeeze(-1) / 2  # [Lq, H]
        half_range = (values.amax(0) - values.amin(0)) / 2  # [H, D]
        bounds.append(torch.expm1(2 * delta).unsqueeze(-1) * half_range + value_scales.amax(0) / 2)
    return torch.cat(bounds)


def _sequence(q: torch.Tensor, kv: KVCacheView, batch, s: int) -> tuple[torch.Tensor, ...]:
    """Sequence s's query rows [Lq, H, D] and its keys and values [L, H, D], KV heads repeated per query head."""
    table = batch.block_tables[s].long()
    length = int(batch.seq_lens[s])
    keys = kv.keys[table].permute(0, 3, 1, 2).flatten(0, 1)[:length]
    values = kv.values[table].transpose(1, 2).flatten(0, 1)[:length]
    group = HEADS // KV_HEADS
    rows = q[batch.query_start[s] : batch.query_start[s + 1]].double()
    return rows, keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)


def _visible(rows: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[Lq, L]: the rows are the last Lq positions of the sequence; each sees keys up to its own."""
    first = keys.shape[0] - rows.shape[0]
    return torch.arange(keys.shape[0])[None, :] <= first + torch.arange(rows.shape[0])[:, None]
