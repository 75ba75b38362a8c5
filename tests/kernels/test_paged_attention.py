"""The C paged-attention kernel against the plain PyTorch backend, on random pools and tables."""

import pytest
import torch

from tests.kernels.paged_inputs import NATIVE, quantized, random_batch, random_kv, strided_q
from tokenmill.attention.cpu_backend import CpuAttentionBackend
from tokenmill.attention.base import AttentionBatch
from tokenmill.attention.selector import select_attention_backend
from tokenmill.attention.torch_backend import TorchAttentionBackend

pytestmark = pytest.mark.skipif(NATIVE is None, reason="no C compiler for the cpu attention kernel")

CASES = {
    "decode": ([1] * 12, [1, 2, 15, 16, 17, 33, 64, 100, 250, 300, 511, 700]),
    "prefill": ([37, 200], [37, 260]),
    "mixed": ([1, 1, 1, 5, 64], [9, 400, 31, 5, 90]),
}
# (heads, kv heads, head dim, block size): MHA, GQA, MQA, the default model's shape, odd sizes.
SHAPES = [(4, 4, 32, 16), (9, 3, 64, 16), (8, 1, 64, 8), (6, 2, 128, 16), (4, 2, 48, 4)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", SHAPES)
def test_kernel_matches_torch_backend(case, heads, kv_heads, head_dim, block_size):
    gen = torch.Generator().manual_seed(0)
    q_lens, seq_lens = CASES[case]
    num_blocks = sum(-(-n // block_size) for n in seq_lens) + 7
    kv = random_kv(num_blocks, kv_heads, head_dim, block_size, gen)
    batch = random_batch(q_lens, seq_lens, num_blocks, block_size, gen)
    q = strided_q(sum(q_lens), heads, kv_heads, head_dim, gen)

    expected = TorchAttentionBackend(heads // kv_heads).plan(batch).attend(q, kv)
    actual = CpuAttentionBackend(NATIVE).plan(batch).attend(q, kv)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_dtype", ["float32", "int8"])
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", SHAPES)
def test_a_query_gives_the_same_bits_in_a_whole_prefill_a_chunk_and_a_decode_row(
    heads, kv_heads, head_dim, block_size, kv_dtype
):
    """Batch invariance rests on this: the kernel groups query rows differently in each case."""
    gen = torch.Generator().manual_seed(1)
    seq_len = 70
    num_blocks = -(-seq_len // block_size) + 3
    kv = random_kv(num_blocks, kv_heads, head_dim, block_size, gen)
    kv = quantized(kv) if kv_dtype == "int8" else kv
    tables = torch.randperm(num_blocks, generator=gen)[None, : -(-seq_len // block_size)].int()
    q = torch.randn(seq_len, heads, head_dim, generator=gen)
    backend = CpuAttentionBackend(NATIVE)

    def attend(first: int, last: int) -> torch.Tensor:
        """Queries at positions [first, last) with the keys up to last: a chunk, or a decode row."""
        batch = AttentionBatch(
            slot_blocks=torch.zeros(last - first, dtype=torch.long),
            slot_offsets=torch.zeros(last - first, dtype=torch.long),
            query_start=torch.tensor([0, last - first], dtype=torch.int32),
            seq_lens=torch.tensor([last], dtype=torch.int32),
            block_tables=tables,
            num_decode=int(last - first == 1),
            block_size=block_size,
        )
        return backend.plan(batch).attend(q[first:last], kv)

    whole = attend(0, seq_len)
    assert torch.equal(attend(29, seq_len), whole[29:])
    for position in (0, 16, 37, seq_len - 1):
        assert torch.equal(attend(position, position + 1), whole[position : position + 1])


def test_auto_selects_the_kernel_for_float32_on_cpu_only():
    cpu = torch.device("cpu")
    assert select_attention_backend("auto", cpu, torch.float32, 3, 64, 16).name == "cpu"
    assert select_attention_backend("auto", cpu, torch.bfloat16, 3, 64, 16).name == "torch"
    assert select_attention_backend("torch", cpu, torch.float32, 3, 64, 16).name == "torch"
    with pytest.raises(ValueError, match="float32 on the CPU"):
        select_attention_backend("cpu", cpu, torch.bfloat16, 3, 64, 16)
