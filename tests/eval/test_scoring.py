"""prompt_logprobs: one sequence's prefill through the engine's KV pool, every block given back."""

import pytest
import torch

from tokenmill import SamplingParams
from tokenmill.eval.scoring import prompt_logprobs


def test_greedy_generation_picks_the_most_likely_next_token(llm):
    prompt = llm.tokenizer.encode("The capital of France is", add_special_tokens=False)
    [out] = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                         use_tqdm=False)
    token_ids = prompt + out.outputs[0].token_ids
    logprobs = prompt_logprobs(llm.engine, token_ids)
    assert logprobs.shape == (len(token_ids) - 1, llm.engine.arch.vocab_size)
    assert torch.allclose(logprobs.exp().sum(-1), torch.ones(len(token_ids) - 1), atol=1e-4)
    assert logprobs[len(prompt) - 1 :].argmax(-1).tolist() == out.outputs[0].token_ids


def test_a_text_longer_than_the_context_is_refused_before_taking_blocks(llm):
    with pytest.raises(ValueError, match="max_model_len"):
        prompt_logprobs(llm.engine, [1] * (llm.engine.max_model_len + 1))
