"""Captured and replayed decode steps against the same engine run eagerly (enforce_eager), which
the parity tests check against Hugging Face transformers: the same tokens, and the same
log-probabilities to the bit, for every batch size that is captured and for those that are not."""

import gc

import pytest
import torch

from tokenmill import LLM
from tokenmill.runner.capture_guard import CaptureGuard
from tokenmill.runner.step_graph import MAX_ROWS
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
    assert (num_prompts, num_prompts, False) in graphs(fast).graphs  # captured on the first run ...
    assert run(fast, prompts) == expected  # ... and replayed on the second


def test_sampled_and_penalized_steps_replay_too(make_llm):
    fast, eager = make_llm(), make_llm(enforce_eager=True)
    params = dict(temperature=0.8, top_p=0.9, seed=7, repetition_penalty=1.3)
    prompts = PROMPTS[:4]
    assert run(fast, prompts, **params) == run(eager, prompts, **params)
    assert (4, 4, False) in graphs(fast).graphs


def _half_into_second_half(out: torch.Tensor, _: torch.Tensor) -> None:
    half = out.shape[-1] // 2
    out[..., half : 2 * half].copy_(out[..., :half])


def _add_input_product(out: torch.Tensor, inputs: torch.Tensor) -> None:
    """A LoRA-like delta: out += inputs @ weight, written in place."""
    out.view(-1, out.shape[-1]).addmm_(inputs.view(-1, inputs.shape[-1]), FOUR_EYE)


FOUR_EYE = 4 * torch.eye(576)  # the default model's hidden size
# What a hook (or a LoRA delta written in torch) may do to a layer's output, given its input too.
# Replaying the kernels alone would drop each of them, so the step must stay eager. Each runs at
# its own batch size.
HOOKS = {
    "a new tensor": lambda out, _: out * 0.5,
    "mul_": lambda out, _: out.mul_(0.5),
    "add_": lambda out, _: out.add_(out),
    "addmm_": _add_input_product,
    "copy_": _half_into_second_half,
    "out=": lambda out, _: torch.mul(out, 0.5, out=out),
}


@pytest.mark.parametrize("batch_size, hook", list(enumerate(HOOKS, start=1)))
def test_a_torch_operation_inside_the_layers_keeps_that_batch_size_eager(make_llm, batch_size, hook):
    """Each hook changes the output (checked against the model without it), and the captured engine
    gives the eager engine's tokens with it: the step was not captured without the hook's work."""
    fast, eager = make_llm(kv_cache_memory=128 * 2**20), make_llm(kv_cache_memory=128 * 2**20, enforce_eager=True)
    prompts = PROMPTS[:batch_size]
    unhooked = run(eager, prompts)
    edit = HOOKS[hook]
    hooks = [llm.engine.runner.model.model.layers[3].mlp.register_forward_hook(lambda m, i, out: edit(out, i[0]))
             for llm in (fast, eager)]  # fmt: skip
    try:
        expected = run(eager, prompts)
        assert [tokens for tokens, _ in expected] != [tokens for tokens, _ in unhooked]  # the hook does something
        assert run(fast, prompts) == expected
        assert run(fast, prompts) == expected  # the second run would replay a capture
        shape = (batch_size, batch_size, False)
        assert shape in graphs(fast).eager_shapes and shape not in graphs(fast).graphs
    finally:
        for handle in hooks:
            handle.remove()


@pytest.mark.parametrize("mode", [{}, {"dtype": "bfloat16"}, {"quantization": "gguf"}, {"quantization": "int8"},
                                  {"quantization": "int4"}, {"kv_cache_dtype": "int8"},
                                  {"quantization": "gguf", "dtype": "bfloat16", "kv_cache_dtype": "int8"}])
def test_every_operation_of_the_models_own_forward_is_known_to_the_guard(mode):
    """The model's decode step captures in every mode: nothing in its own forward is refused.
    (An engine of its own, freed after: the session's engines stay for the whole run.)"""
    llm = LLM(**{"dtype": "float32", "quantization": "none", "kv_cache_memory": 16 * 2**20, **mode})
    try:
        run(llm, PROMPTS[:2])
        assert graphs(llm).eager_shapes == set() and (2, 2, False) in graphs(llm).graphs
    finally:
        del llm
        gc.collect()


def test_the_guard_tells_views_from_copies_and_mutations():
    with CaptureGuard() as guard:
        x = torch.empty(4, 6)
        x.view(6, 4), x.t(), x.flatten(), x.contiguous(), x.float(), x.split(2), x[1:]
    assert guard.refusal is None and [t.data_ptr() for t in guard.allocated] == [x.data_ptr()]
    for operation in (lambda x: x.t().contiguous(), lambda x: x.double(), lambda x: x.t().flatten(),
                      lambda x: x[torch.tensor([0])], lambda x: x.zero_(), lambda x: x + 1):  # fmt: skip
        x = torch.empty(4, 6)
        with CaptureGuard() as guard:
            operation(x)
        assert guard.refusal is not None


def test_larger_batches_and_mixed_steps_run_eagerly(make_llm):
    fast = make_llm()
    prompts = [f"{i} apples and" for i in range(MAX_ROWS + 2)]
    run(fast, prompts)
    assert max((rows for _, rows, _ in graphs(fast).graphs), default=0) <= MAX_ROWS
    assert all(graph.logits.dtype == torch.float32 for graph in graphs(fast).graphs.values())
