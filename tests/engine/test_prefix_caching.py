"""Prefix caching on the real model: the same tokens as without it, and the KV really reused."""

from tokenmill import SamplingParams
from tokenmill.bench.workloads import CORPUS_PATH

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


def shared_prefix_prompts(n: int) -> list[str]:
    paragraphs = CORPUS_PATH.read_text(encoding="utf-8").split("\n\n")[1:]
    system = "Answer from this reference.\n\n" + "\n\n".join(paragraphs[:6])
    return [f"{system}\n\nQuestion {i}: {paragraphs[10 + i][:200]}" for i in range(n)]


def test_outputs_are_token_identical_with_the_cache_on_and_off(make_llm):
    on, off = make_llm(max_num_batched_tokens=128), make_llm(max_num_batched_tokens=128, enable_prefix_caching=False)
    prompts = shared_prefix_prompts(6)
    sampled = SamplingParams(max_tokens=16, temperature=0.8, seed=5, n=3)
    for params in (GREEDY, sampled):
        with_cache = on.generate(prompts, params, use_tqdm=False)
        without = off.generate(prompts, params, use_tqdm=False)
        assert [[c.token_ids for c in o.outputs] for o in with_cache] == [[c.token_ids for c in o.outputs] for o in without]
        assert all(o.num_cached_tokens == 0 for o in without)
    prefix_len = len(on.tokenizer.encode(prompts[0])) - 60
    # this second round finds every shared block cached by the first
    assert all(o.num_cached_tokens >= prefix_len // 16 * 16 - 16 for o in with_cache)


def test_the_second_turn_of_a_chat_reuses_the_first_turn_and_its_reply(make_llm):
    llm = make_llm()
    turn1 = [{"role": "user", "content": shared_prefix_prompts(1)[0][:600]}]
    first = llm.chat(turn1, GREEDY, use_tqdm=False)[0]
    conversation = turn1 + [{"role": "assistant", "content": first.outputs[0].text},
                            {"role": "user", "content": "Say that again in one sentence."}]
    second = llm.chat(conversation, GREEDY, use_tqdm=False)[0]
    reused = len(first.prompt_token_ids) + len(first.outputs[0].token_ids) - 2  # the reply's end re-renders
    assert second.num_cached_tokens >= reused // 16 * 16 - 16
    assert second.num_cached_tokens > len(first.prompt_token_ids)  # the reply's blocks too
