"""The batched sampler on the real model: seeds, truncation, penalties, stops, logprobs, n > 1."""

import math
from collections import Counter

from tokenmill import SamplingParams
from tokenmill.bench.workloads import offline_workload
from tokenmill.engine.scheduler import shared_prefix_len

PROMPT = "The history of the printing press begins"
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def generate(llm, prompts, params):
    return llm.generate(prompts, params, use_tqdm=False)


def tokens(out, i=0):
    return list(out.outputs[i].token_ids)


def test_a_seed_gives_the_same_sample_whatever_else_is_in_the_batch(llm):
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=24, ignore_eos=True)
    [alone] = generate(llm, PROMPT, seeded)
    others = ["Once upon a time", "def main():", "The weather today"]
    crowd = generate(llm, [*others, PROMPT], [SamplingParams(temperature=1.0, max_tokens=30)] * 3 + [seeded])
    assert tokens(crowd[3]) == tokens(alone)
    [other_seed] = generate(llm, PROMPT, SamplingParams(temperature=1.0, seed=8, max_tokens=24, ignore_eos=True))
    assert tokens(other_seed) != tokens(alone)


def test_top_k_1_and_tiny_top_p_are_greedy(llm):
    [greedy] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    for params in (SamplingParams(temperature=1.5, top_k=1, seed=1, max_tokens=16, ignore_eos=True),
                   SamplingParams(temperature=1.5, top_p=1e-6, seed=1, max_tokens=16, ignore_eos=True),
                   SamplingParams(temperature=1.5, min_p=0.999, seed=1, max_tokens=16, ignore_eos=True)):
        [out] = generate(llm, PROMPT, params)
        assert tokens(out) == tokens(greedy), params


def test_stop_string_ends_the_text_before_it_unless_asked_to_include_it(llm):
    [free] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    text = free.outputs[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 4]  # likely spans a token boundary
    [out] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=24, stop=[stop]))
    assert out.outputs[0].text == text[: text.index(stop)]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    [kept] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=24, stop=stop,
                                                  include_stop_str_in_output=True))
    assert kept.outputs[0].text == text[: text.index(stop) + len(stop)]


def test_stop_token_id_ends_the_sequence_on_it(llm):
    [free] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    stop_id = tokens(free)[5]
    first = tokens(free).index(stop_id)
    [out] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_id]))
    assert tokens(out) == tokens(free)[: first + 1]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop_id


def test_min_tokens_holds_eos_back_and_ignore_eos_runs_to_max_tokens(llm):
    eos = llm.tokenizer.eos_token_id
    [short] = generate(llm, CHAT, SamplingParams(temperature=0, max_tokens=64))
    assert short.outputs[0].finish_reason == "stop" and len(tokens(short)) < 30
    [held] = generate(llm, CHAT, SamplingParams(temperature=0, max_tokens=64, min_tokens=30))
    assert len(tokens(held)) >= 30 and eos not in tokens(held)[:30]
    [ignored] = generate(llm, CHAT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert len(tokens(ignored)) == 40 and ignored.outputs[0].finish_reason == "length"


def test_penalties_reduce_repetition(llm):
    prompt = "Repeat after me: the cat, the cat, the cat, the cat, the cat,"
    base = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    [plain] = generate(llm, prompt, base)
    most_common = Counter(tokens(plain)).most_common(1)[0][1]
    for penalty in ({"repetition_penalty": 1.8}, {"frequency_penalty": 1.5}, {"presence_penalty": 2.0}):
        params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, **penalty)
        [out] = generate(llm, prompt, params)
        assert tokens(out) != tokens(plain), penalty
        assert Counter(tokens(out)).most_common(1)[0][1] < most_common, penalty


def test_logprobs_rank_the_top_tokens_and_include_the_sampled_one(llm):
    [out] = generate(llm, PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=3))
    completion = out.outputs[0]
    assert len(completion.logprobs) == 6
    for token_id, top in zip(completion.token_ids, completion.logprobs):
        assert token_id in top and top[token_id].rank == 1  # greedy picks the most likely token
        ranked = sorted(top.values(), key=lambda lp: lp.rank)
        assert [lp.rank for lp in ranked][:3] == [1, 2, 3]
        assert all(a.logprob >= b.logprob for a, b in zip(ranked, ranked[1:]))
        assert sum(math.exp(lp.logprob) for lp in ranked) <= 1.0 + 1e-5
        assert all(lp.decoded_token is not None for lp in ranked)


def test_n_samples_are_distinct_and_share_the_prompt_blocks(llm):
    engine = llm.engine
    [passage] = offline_workload(llm.tokenizer, num_requests=1, min_input_len=100, max_input_len=100)
    prompt_ids = passage.prompt_token_ids  # several full blocks of real prose
    request_id = engine.add_request(prompt_ids, SamplingParams(n=3, temperature=1.5, seed=3, max_tokens=8))
    seqs = engine.requests[request_id].seqs
    engine.step()  # sample 0 computes the prompt; the others join once it has
    engine.step()
    block_size = engine.kv_manager.block_size
    full_blocks = shared_prefix_len(len(prompt_ids), block_size) // block_size
    tables = [engine.kv_manager.block_table(s.seq_id) for s in seqs]
    shared = tables[0][:full_blocks]
    assert full_blocks >= 2 and all(t[:full_blocks] == shared for t in tables)
    assert all(engine.kv_manager.ref_counts[b] == 3 for b in shared)
    while engine.has_unfinished_requests():
        engine.step()
    samples = [tuple(s.token_ids[s.num_prompt_tokens :]) for s in seqs]
    assert len(samples) == 3 and len(set(samples)) == 3
