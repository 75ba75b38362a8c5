"""The Triton paged-attention kernel against the plain PyTorch backend: decode rows, prefill
chunks over a cached prefix and mixed steps; float32, bfloat16 and an int8 cache; MHA and GQA.
Without a GPU it runs under Triton's interpreter (small shapes)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported

triton = pytest.importorskip("triton")

from tests.kernels.paged_inputs import quantized, random_batch, random_kv, strided_q  # noqa: E402
from tokenmill.attention.base import KVCacheView  # noqa: E402
from tokenmill.attention.torch_backend import TorchAttentionBackend  # noqa: E402
from tokenmill.attention.triton_backend import TritonAttentionBackend  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = {
    "decode": ([1] * 6, [1, 15, 16, 17, 64, 130]),
    "prefill over a cached prefix": ([20, 9], [20, 57]),
    "mixed": ([1, 1, 5, 33], [9, 70, 5, 40]),
}
SHAPES = [(4, 4, 32, 16), (9, 3, 64, 16), (6, 2, 128, 16)]  # MHA, the default model's GQA, wide heads


def _inputs(case: str, heads: int, kv_heads: int, head_dim: int, block_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q_lens, seq_lens = CASES[case]
    num_blocks = sum(-(-n // block_size) for n in seq_lens) + 5
    kv = random_kv(num_blocks, kv_heads, head_dim, block_size, gen)
    batch = random_batch(q_lens, seq_lens, num_blocks, block_size, gen)
    return kv, batch, strided_q(sum(q_lens), heads, kv_heads, head_dim, gen)


def _on(device: torch.device, kv: KVCacheView, dtype: torch.dtype | None = None) -> KVCacheView:
    cast = (lambda t: t.to(device)) if dtype is None else (lambda t: t.to(device, dtype))
    scales = (None, None) if kv.key_scales is None else (kv.key_scales.to(device), kv.value_scales.to(device))
    return KVCacheView(cast(kv.keys), cast(kv.values), *scales)


def _batch_on(device, batch):
    from dataclasses import fields, replace

    return replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in fields(batch)
                             if isinstance(getattr(batch, f.name), torch.Tensor)})  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", SHAPES)
def test_float32_matches_torch_backend(case, heads, kv_heads, head_dim, block_size):
    kv, batch, q = _inputs(case, heads, kv_heads, head_dim, block_size)
    expected = TorchAttentionBackend(heads // kv_heads).plan(batch).attend(q, kv)
    actual = TritonAttentionBackend().plan(_batch_on(DEVICE, batch)).attend(q.to(DEVICE), _on(DEVICE, kv))
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_bfloat16_and_an_int8_cache_match_torch_backend(case):
    heads, kv_heads, head_dim, block_size = SHAPES[1]
    kv, batch, q = _inputs(case, heads, kv_heads, head_dim, block_size, seed=1)
    reference = TorchAttentionBackend(heads // kv_heads).plan(batch)
    # bfloat16 activations and cache, against float32 on the same bfloat16-rounded values
    kv16, q16 = _on(torch.device("cpu"), kv, torch.bfloat16), q.to(torch.bfloat16)
    expected = reference.attend(q16.float(), _on(torch.device("cpu"), kv16, torch.float32))
    actual = TritonAttentionBackend().plan(_batch_on(DEVICE, batch)).attend(q16.to(DEVICE), _on(DEVICE, kv16))
    torch.testing.assert_close(actual.cpu().float(), expected, rtol=2e-2, atol=2e-2)
    # an int8 cache: both dequantize the same bytes
    int8 = quantized(kv)
    expected = reference.attend(q, int8)
    actual = TritonAttentionBackend().plan(_batch_on(DEVICE, batch)).attend(q.to(DEVICE), _on(DEVICE, int8))
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_rows_know_their_sequence_and_position():
    kv, batch, _ = _inputs("mixed", *SHAPES[1])
    plan = TritonAttentionBackend().plan(batch)
    assert plan.row_seq.tolist() == [0, 1] + [2] * 5 + [3] * 33
    assert plan.row_pos.tolist() == [8, 69, *range(5), *range(7, 40)]


def test_the_engine_on_the_triton_backend_gives_the_same_greedy_tokens(llm):
    """The backend plugged into the engine (its plan, the cache writes, every layer): the default
    model's greedy tokens equal those of the engine on the C kernel."""
    import gc

    from tokenmill import LLM, SamplingParams

    params = SamplingParams(max_tokens=6, temperature=0)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    triton_llm = LLM(dtype="float32", quantization="none", kv_cache_memory=64 * 2**20, attention_backend="triton",
                     device=str(DEVICE))
    try:
        assert triton_llm.engine.runner.attention.name == "triton"
        got = [o.outputs[0].token_ids for o in triton_llm.generate(prompts, params, use_tqdm=False)]
    finally:
        del triton_llm
        gc.collect()
    assert got == [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
