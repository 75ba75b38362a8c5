"""Tensor parallelism with real worker processes over gloo: greedy outputs of the default model
split over 3 ranks (its 9 query and 3 KV heads split 3 ways), batched with chunked prefill, are
token-identical to one process in float32; and a model with fewer KV heads than ranks (random
weights: no such model is here) replicates them and matches its one-process run."""

import gc

import pytest
import torch

from tests.distributed.split import OPTIONS, outputs, run_split, single_process_outputs
from tests.model.test_logits_match_transformers import PROMPTS
from tokenmill import LLM, SamplingParams

def test_three_ranks_give_one_process_greedy_tokens(make_llm):
    expected = outputs(make_llm(), PROMPTS)
    assert run_split(None, 3, PROMPTS) == expected


def test_two_ranks_replicate_a_single_kv_head(one_kv_head_model):
    expected = single_process_outputs(one_kv_head_model, PROMPTS)
    assert run_split(one_kv_head_model, 2, PROMPTS) == expected


def test_sizes_the_heads_do_not_allow_are_refused():
    with pytest.raises(ValueError, match="tensor_parallel_size 2 does not divide the model's 9 attention heads"):
        LLM(tensor_parallel_size=2, **OPTIONS)


@pytest.mark.skipif(torch.cuda.device_count() < 3, reason="needs 3 GPUs: the same split over NCCL")
def test_three_gpus_over_nccl_give_one_gpus_greedy_tokens():
    expected = single_process_outputs(None, PROMPTS, device="cuda")
    assert run_split(None, 3, PROMPTS, device="cuda") == expected


@pytest.mark.parametrize("method", [{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2},
                                    {"method": "draft", "draft_layers": 6, "num_speculative_tokens": 2}])
def test_speculative_decoding_under_three_ranks_keeps_one_process_greedy_tokens(make_llm, method):
    """Every rank proposes from the same tokens (a draft model whole on each), and verification
    reads the gathered logits: greedy output is plain decoding's."""
    def speculated(llm):
        stats = llm.engine.stats()
        assert stats.spec_draft_tokens > 0 and stats.spec_accepted_tokens > 0

    repetitive = ["1, 2, 3, 1, 2, 3, 1, 2, 3, 1,", "red green blue red green blue red"]  # n-grams to look up
    expected = outputs(make_llm(), repetitive)
    assert run_split(None, 3, repetitive, inspect=speculated, speculative_config=method) == expected


def test_lora_under_three_ranks_keeps_one_process_greedy_tokens(gguf_path, tmp_path):
    """Each rank holds its part of every adapter (B's rows of a column-parallel layer, A's input
    columns of a row-parallel one, whose partial delta joins its all-reduce): a batch mixing an
    adapter (on every target layer) and the base model gives one process's tokens."""
    from tests.lora.adapters import TARGETS, make_adapter
    from tokenmill.lora.request import LoRARequest

    make_adapter(gguf_path, tmp_path / "adapter", seed=5, rank=8, targets=TARGETS)
    adapter = LoRARequest("adapter", 1, tmp_path / "adapter")
    mix = [adapter, None] * 3
    options = dict(enable_lora=True, max_loras=2, max_lora_rank=8)
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    single = LLM(**OPTIONS, **options)
    try:
        expected = [o.outputs[0].token_ids for o in single.generate(PROMPTS, params, lora_request=mix, use_tqdm=False)]
        base = [o.outputs[0].token_ids for o in single.generate(PROMPTS, params, use_tqdm=False)]
    finally:
        del single
        gc.collect()
    assert expected[0::2] != base[0::2]  # the adapter changes what the model says
    split = LLM(tensor_parallel_size=3, **OPTIONS, **options)
    try:
        got = [o.outputs[0].token_ids for o in split.generate(PROMPTS, params, lora_request=mix, use_tqdm=False)]
    finally:
        split.engine.shutdown()
        del split
        gc.collect()
    assert got == expected


def test_preemption_under_three_ranks_keeps_one_process_greedy_tokens(make_llm):
    """A pool too small for the batch: sequences are preempted and recomputed on every rank alike."""

    def preempted(llm):
        assert llm.engine.scheduler.num_preemptions > 0

    expected = outputs(make_llm(), PROMPTS, max_tokens=40)
    assert run_split(None, 3, PROMPTS, inspect=preempted, max_tokens=40, kv_cache_memory=4 * 2**20) == expected


@pytest.mark.parametrize("quantization", ["gguf", "int4"])
def test_quantized_weights_under_three_ranks_keep_one_process_greedy_tokens(make_llm, quantization):
    """Each rank's part of every quantized matrix is cut in its packed form (the GGUF file's own
    Q4_1 blocks), or quantized at load time from its float part (int4's groups of 32 input columns
    fall whole on each rank, so its scales are one process's); the row-parallel layers and the
    embedding keep their all-reduce around the quantized product. (int8 at load time scales each
    output row by its maximum, which a row-parallel rank sees only part of: its tokens may differ.)"""
    def quantized(llm):
        from tokenmill.quant.linear import QuantLinear

        o_proj = llm.engine.runner.model.model.layers[0].self_attn.o_proj
        assert isinstance(o_proj.product, QuantLinear) and o_proj.weight is None

    expected = outputs(make_llm(quantization=quantization), PROMPTS)
    assert run_split(None, 3, PROMPTS, inspect=quantized, quantization=quantization) == expected


def test_a_quantized_column_split_that_cuts_groups_is_refused():
    from tokenmill.quant.tensor import quantize_int4

    with pytest.raises(ValueError, match="cut the matrix's groups of 32"):
        quantize_int4(torch.randn(4, 128), 32).narrow(1, 16, 64)
