"""Tensor parallelism with real worker processes over gloo: greedy outputs of the default model
split over 3 ranks (its 9 query and 3 KV heads split 3 ways), batched with chunked prefill, are
token-identical to one process in float32; and a model with fewer KV heads than ranks (random
weights: no such model is here) replicates them and matches its one-process run."""

import gc
import json

import psutil
import pytest
import torch

from tests.model.test_logits_match_transformers import PROMPTS
from tokenmill import LLM, SamplingParams

OPTIONS = dict(dtype="float32", quantization="none", kv_cache_memory=64 * 2**20)


def outputs(llm: LLM, prompts: list[str], max_tokens: int = 24) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "tokenmill.distributed.worker" in " ".join(p.cmdline())]


def run_split(model: str | None, tensor_parallel_size: int, prompts: list[str]) -> list[list[int]]:
    """The outputs of an engine split over ranks, chunked prefill forced by a small token budget;
    its workers are gone once it shuts down."""
    llm = LLM(model, tensor_parallel_size=tensor_parallel_size, max_num_batched_tokens=32, **OPTIONS)
    try:
        assert len(workers()) == tensor_parallel_size - 1
        assert llm.engine.kv_manager.num_free_blocks == llm.engine.kv_manager.num_blocks
        got = outputs(llm, prompts)
        assert llm.engine.kv_manager.num_free_blocks == llm.engine.kv_manager.num_blocks
        return got
    finally:
        llm.engine.shutdown()
        del llm
        gc.collect()
        psutil.wait_procs(workers(), timeout=10)
        assert not workers()


def test_three_ranks_give_one_process_greedy_tokens(make_llm):
    expected = outputs(make_llm(), PROMPTS)
    assert run_split(None, 3, PROMPTS) == expected


@pytest.fixture(scope="module")
def one_kv_head_model(tmp_path_factory, gguf_path):
    """A small llama with 4 query heads and 1 KV head, random weights, the default tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                         initializer_range=0.2, max_position_embeddings=1024)  # peaked logits: no near-ties
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("one-kv-head")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "model_type": "llama"}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              out / "model.safetensors")
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(out)
    return str(out)


def test_two_ranks_replicate_a_single_kv_head(one_kv_head_model):
    single = LLM(one_kv_head_model, **OPTIONS)
    try:
        expected = outputs(single, PROMPTS)
    finally:
        del single
        gc.collect()
    assert run_split(one_kv_head_model, 2, PROMPTS) == expected


def test_sizes_the_heads_do_not_allow_are_refused():
    with pytest.raises(ValueError, match="tensor_parallel_size 2 does not divide the model's 9 attention heads"):
        LLM(tensor_parallel_size=2, **OPTIONS)
