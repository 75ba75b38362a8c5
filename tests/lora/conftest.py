import gc

import pytest

from tokenmill import LLM


@pytest.fixture(scope="package")
def lora_llm():
    """A float32 engine with two LoRA slots of rank 8, shared by the package's tests."""
    llm = LLM(dtype="float32", quantization="none", kv_cache_memory=128 * 2**20, enable_lora=True, max_loras=2,
              max_lora_rank=8)
    yield llm
    del llm
    gc.collect()
