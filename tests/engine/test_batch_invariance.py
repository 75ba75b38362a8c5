"""Batching, chunked prefill and preemption must not change what a request generates (greedy, float32)."""

import pytest

from tokenmill import SamplingParams
from tokenmill.bench.workloads import offline_workload
from tokenmill.runner.kv_cache import block_bytes

PARAMS = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(llm):
    requests = offline_workload(llm.tokenizer, num_requests=32, min_input_len=5, max_input_len=250, output_len=16)
    return [{"prompt_token_ids": r.prompt_token_ids} for r in requests]


@pytest.fixture(scope="module")
def alone(llm, prompts):
    """Each prompt generated with nothing else in flight, its prompt in one chunk."""
    return [llm.generate(p, PARAMS, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]


def test_batched_with_chunked_prefill_equals_alone(make_llm, prompts, alone):
    llm = make_llm(max_num_batched_tokens=48)
    together = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in together] == alone


def test_preemption_under_a_tiny_kv_budget_equals_alone(make_llm, prompts, alone):
    llm = make_llm(max_num_batched_tokens=64, kv_cache_memory=40 * _block_bytes(make_llm))
    together = llm.generate(prompts, PARAMS, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    assert sum(o.metrics.num_preemptions for o in together) == llm.engine.scheduler.num_preemptions
    assert [o.outputs[0].token_ids for o in together] == alone


def _block_bytes(make_llm) -> int:
    engine = make_llm().engine
    return block_bytes(engine.arch, engine.kv_manager.block_size, engine.runner.paged.kv_cache.dtype)
