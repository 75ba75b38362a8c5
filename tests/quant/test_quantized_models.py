"""The default model with quantized weights keeps answering, end to end through the engine."""

import pytest
import torch

from tokenmill import LLM, SamplingParams

# Questions whose float32 answer is clear: the answer's first token wins by a margin (checked below).
FACTS = {
    "What is the capital of France?": "Paris",
    "What is the capital of Japan?": "Tokyo",
    "How many days are in a week?": "7",
    "What is the chemical symbol for gold?": "Au",
    "Who wrote Romeo and Juliet?": "Shakespeare",
    "What is the boiling point of water in degrees Celsius?": "100",
}
GREEDY = SamplingParams(max_tokens=24, temperature=0, logprobs=2)
SMALL_KV = {"kv_cache_memory": 64 * 2**20}  # these engines run a few short requests


def answers(llm: LLM) -> list:
    return [out.outputs[0] for out in llm.chat([[{"role": "user", "content": q}] for q in FACTS], GREEDY,
                                                use_tqdm=False)]


def answer_margin(llm: LLM, completion, answer: str) -> float:
    """Log-probability lead of the token that first completes the answer over the runner-up."""
    for i in range(len(completion.token_ids)):
        if answer in llm.tokenizer.decode(completion.token_ids[: i + 1]):
            top = sorted((lp.logprob for lp in completion.logprobs[i].values()), reverse=True)
            return top[0] - top[1]
    raise AssertionError(f"{answer!r} is not in {completion.text!r}")


@pytest.fixture(scope="module")
def float32_answers(llm) -> list:
    completions = answers(llm)
    for completion, answer in zip(completions, FACTS.values()):
        assert answer_margin(llm, completion, answer) > 0.5, "not a clear answer: pick another question"
    return completions


@pytest.mark.parametrize("quantization", ["int8", "int4", "gguf"])
def test_quantized_weights_answer_facts(make_llm, float32_answers, quantization):
    llm = make_llm(quantization=quantization, **SMALL_KV)
    for completion, answer in zip(answers(llm), FACTS.values()):
        assert answer in completion.text, (quantization, completion.text)


def test_gguf_weights_are_the_float32_models_own(llm, make_llm):
    """The default model's float32 weights are its Q4_1 and Q8_0 blocks dequantized; read natively,
    the same values run through the quantized kernel. On its float path the logits agree to float32
    rounding; on the integer path for 4-bit weights (int16 activations), to 1e-2."""
    prompt = {"prompt_token_ids": llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 4)}
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=20)

    def logprobs(engine: LLM) -> dict:
        return engine.generate(prompt, params, use_tqdm=False)[0].outputs[0].logprobs[0]

    expected = logprobs(llm)
    gguf = make_llm(quantization="gguf", **SMALL_KV)
    kernel = gguf.engine.runner.model.lm_head.kernel  # one kernel object for every layer
    integer_path = kernel.integer_path_for_int4
    try:
        kernel.integer_path_for_int4 = False
        float_path = logprobs(gguf)
    finally:
        kernel.integer_path_for_int4 = integer_path
    for actual, tolerance in ((float_path, 1e-3), (logprobs(gguf), 1e-2)):
        assert set(actual) == set(expected)
        for token, lp in expected.items():
            assert abs(actual[token].logprob - lp.logprob) < tolerance


def test_quantized_layers_replace_every_matrix(make_llm):
    model = make_llm(quantization="int4", **SMALL_KV).engine.runner.model
    assert not any(isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) for m in model.modules())
    layer = model.model.layers[0]
    assert (layer.self_attn.qkv_proj.bits, layer.mlp.down_proj.bits, model.lm_head.bits) == (4, 4, 8)
    assert model.model.embed_tokens.source is model.lm_head  # tied: one matrix for both
    # Nothing holds on to the float weights (an autograd graph behind the scales once did).
    assert all(b.grad_fn is None and not b.requires_grad for b in model.buffers())


def test_bad_quantization_options_are_clear(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        LLM(quantization="int4", quantization_group_size=40)
    with pytest.raises(ValueError, match="float32"):
        LLM(quantization="int8", dtype="float16")
    with pytest.raises(ValueError, match="GGUF file"):
        LLM(tmp_path, quantization="gguf")
    with pytest.raises(ValueError, match="quantization must be one of"):
        LLM(quantization="int3")
