"""The engine on the real model with kv_cache_dtype="int8"."""

import pytest

from tokenmill import SamplingParams
from tokenmill.bench.workloads import offline_workload

# Questions the float32 model answers correctly, with a word the answer must hold.
FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the chemical symbol for gold?", "Au"),
    ("Who painted the Mona Lisa?", "Leonardo"),
    ("What is the largest ocean on Earth?", "Pacific"),
]


@pytest.mark.parametrize("options", [{}, {"attention_backend": "torch", "kv_cache_memory": 64 * 2**20}],
                         ids=["cpu", "torch"])
def test_greedy_answers_stay_correct(llm, make_llm, options):
    int8 = make_llm(kv_cache_dtype="int8", **options)
    conversations = [[{"role": "user", "content": question}] for question, _ in FACTS]
    params = SamplingParams(temperature=0, max_tokens=20)
    for model in (llm, int8):  # float32 first: the questions themselves are checked
        answers = [out.outputs[0].text for out in model.chat(conversations, params, use_tqdm=False)]
        assert [word in answer for answer, (_, word) in zip(answers, FACTS)] == [True] * len(FACTS), answers


def test_a_mixed_batch_under_a_small_budget_finishes(make_llm):
    """Decode rows beside prefill chunks, greedy and sampled requests, preemptions: every request
    gets its tokens, and the autouse check then finds every block back in the pool.

    Unlike float32, int8 does not promise the same tokens as each request alone: the matmuls'
    last-bit differences between batch shapes move a few K and V elements across a rounding
    boundary, a whole int8 step, which now and then flips a near-tie (a few requests in a hundred)."""
    block = make_llm(kv_cache_dtype="int8").engine.runner.kv_size.block_bytes
    llm = make_llm(kv_cache_dtype="int8", max_num_batched_tokens=48, kv_cache_memory=40 * block)
    requests = offline_workload(llm.tokenizer, num_requests=10, min_input_len=5, max_input_len=250, output_len=16)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    params = [SamplingParams(temperature=0.8 * (i % 2), seed=i, max_tokens=8 + i, ignore_eos=True) for i in range(10)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.engine.scheduler.num_preemptions > 0
    assert [len(out.outputs[0].token_ids) for out in outputs] == [8 + i for i in range(10)]
