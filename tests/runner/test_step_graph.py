"""Captured and replayed decode steps against the same engine run eagerly (enforce_eager), which
the parity tests check against Hugging Face transformers: the same tokens, and the same
log-probabilities to the bit, for every batch size that is captured and for those that are not."""

import pytest
import torch

from tokenmill import LLM
from tokenmill.runner.step_graph import MAX_BATCH_SIZE
from tokenmill.sampling_params import SamplingParams

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,", "Water boils at",
           "The three primary colors are", "import numpy as", "Dear Sir or Madam,"]  # fmt: skip


def run(llm: LLM, prompts: list[str], **params) -> list[tuple[list[int], list[float]]]:
    params = SamplingParams(max_tokens=12, logprobs=2, ignore_eos=True, **{"temperature": 0, **params})
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [(o.outputs[0].token_ids, [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
            for o in outputs]  # fmt: skip


@pytest.fixture(params=["none", "gguf"])
def quantization(request) -> str:
    return request.param


def graphs(llm: LLM):
    decode_graphs = llm.engine.runner.decode_graphs
    if decode_graphs is None:
        pytest.skip("no C kernels here: every step is eager")
    return decode_graphs


@pytest.mark.parametrize("num_prompts", [1, 3, 8])
def test_replayed_steps_give_the_eager_engines_tokens_and_logprobs_bit_for_bit(make_llm, quantization, num_prompts):
    fast, eager = make_llm(quantization=quantization), make_llm(quantization=quantization, enforce_eager=True)
    assert eager.engine.runner.decode_graphs is None
    prompts = PROMPTS[:num_prompts]
    expected = run(eager, prompts)
    assert run(fast, prompts) == expected
    assert num_prompts in graphs(fast).graphs  # captured on the first run ...
    assert run(fast, prompts) == expected  # ... and replayed on the second


def test_sampled_and_penalized_steps_replay_too(make_llm):
    fast, eager = make_llm(), make_llm(enforce_eager=True)
    params = dict(temperature=0.8, top_p=0.9, seed=7, repetition_penalty=1.3)
    prompts = PROMPTS[:4]
    assert run(fast, prompts, **params) == run(eager, prompts, **params)
    assert 4 in graphs(fast).graphs


def test_a_torch_operation_inside_the_layers_keeps_that_batch_size_eager(make_llm):
    """What a replay of the kernels alone would skip (here a hook that scales an MLP's output)
    must not be captured: the step stays eager and its results stay right."""
    fast, eager = make_llm(kv_cache_memory=128 * 2**20), make_llm(kv_cache_memory=128 * 2**20, enforce_eager=True)
    hooks = [llm.engine.runner.model.model.layers[3].mlp.register_forward_hook(lambda m, i, out: out * 0.5)
             for llm in (fast, eager)]  # fmt: skip
    try:
        prompts = PROMPTS[:2]
        assert run(fast, prompts) == run(eager, prompts)
        assert 2 in graphs(fast).eager_sizes and 2 not in graphs(fast).graphs
    finally:
        for hook in hooks:
            hook.remove()


def test_larger_batches_and_mixed_steps_run_eagerly(make_llm):
    fast = make_llm()
    prompts = [f"{i} apples and" for i in range(MAX_BATCH_SIZE + 2)]
    run(fast, prompts)
    assert max(graphs(fast).graphs, default=0) <= MAX_BATCH_SIZE
    assert all(graph.logits.dtype == torch.float32 for graph in graphs(fast).graphs.values())
