"""Sizing the KV pool: what one block costs in each cache dtype, and what a budget then holds."""

import pytest
import torch

from tokenmill import LLM
from tokenmill.model.arch_config import ArchConfig
from tokenmill.runner.kv_cache import block_bytes, kv_storage_dtype

# The default model's shape: 30 layers, 3 KV heads of 64.
ARCH = ArchConfig("llama", 49152, 576, 1536, 30, 9, 3, 64, 1e-5, 1e5, 8192, True)


def test_an_int8_block_counts_its_bytes_and_its_scales():
    # Per token, layer and KV head: K and V, each 64 one-byte elements and a float32 scale.
    assert block_bytes(ARCH, 16, torch.int8) == 16 * 30 * 3 * 2 * (64 + 4)
    assert block_bytes(ARCH, 16, torch.float32) == 16 * 30 * 3 * 2 * 64 * 4
    assert block_bytes(ARCH, 16, torch.float32) / block_bytes(ARCH, 16, torch.int8) > 3.7


def test_the_cache_dtype_chooses_the_pool_element():
    assert kv_storage_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert kv_storage_dtype("int8", torch.float32) == torch.int8


def test_the_same_budget_holds_more_than_three_times_the_tokens_in_int8(llm, make_llm):
    float32, int8 = llm.engine.runner, make_llm(kv_cache_dtype="int8").engine.runner
    assert int8.kv_size.budget_bytes == float32.kv_size.budget_bytes
    assert int8.num_blocks >= 3.7 * float32.num_blocks  # the acceptance floor is 1.8
    assert int8.paged.kv_cache.dtype == torch.int8 and int8.paged.kv_scales is not None
    assert int8.paged.kv_cache.nbytes + int8.paged.kv_scales.nbytes <= int8.kv_size.budget_bytes


def test_fp8_on_the_cpu_is_refused_when_the_engine_is_built():
    with pytest.raises(ValueError, match="'fp8' is not supported.*use kv_cache_dtype 'int8'"):
        LLM(dtype="float32", kv_cache_dtype="fp8", kv_cache_memory=16 * 2**20)
