"""Streaming (StreamingLLM): --sliding-window W --attention-sinks N on the default model. Inside the
window it answers as the plain model; past it, as the masking reference that keeps every block; it
holds a fixed number of blocks however long the stream, and goes on past the model's context."""

import pytest

from tokenmill import LLM, SamplingParams
from tokenmill.bench.kv_usage import record_steps
from tokenmill.model.arch_config import ArchConfig

WINDOW, SINKS, CHUNK = 64, 4, 256
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def streaming(make_llm):
    return make_llm(sliding_window=WINDOW, attention_sinks=SINKS, max_num_batched_tokens=CHUNK)


def test_inside_the_window_it_answers_as_the_plain_model(streaming, llm):
    prompt = "The three primary colors are"
    assert len(streaming.tokenizer.encode(prompt)) + GREEDY.max_tokens < WINDOW
    expected = llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert streaming.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected


def test_past_the_window_it_answers_as_the_masking_reference(streaming, make_llm):
    reference = make_llm(sliding_window=WINDOW, attention_sinks=SINKS, max_num_batched_tokens=CHUNK,
                         disable_hybrid_kv_cache_manager=True)  # fmt: skip
    assert reference.engine.kv_manager.group_windows == (None,)  # keeps every block, masks instead
    prompt = " ".join(f"Line {i}: the mill ground {i * 7 % 13} sacks." for i in range(60))
    assert len(streaming.tokenizer.encode(prompt)) > 4 * WINDOW
    expected = reference.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids
    assert streaming.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected


def test_it_goes_past_the_models_context_holding_a_fixed_number_of_blocks(streaming):
    engine, kv = streaming.engine, streaming.engine.kv_manager
    limit = engine.arch.max_position_embeddings  # 8,192 for the default model
    assert engine.max_model_len > 100 * limit
    text = " ".join(f"Entry {i}: the river was {'high' if i % 3 else 'low'}." for i in range(1200))
    prompt = streaming.tokenizer.encode(text)[: limit - 40]
    with record_steps(engine) as steps:
        out = streaming.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=100,
                                                                                  ignore_eos=True), use_tqdm=False)[0]
    held = steps.blocks_held
    assert len(prompt) + len(out.outputs[0].token_ids) == limit + 60 and out.outputs[0].finish_reason == "length"
    window_blocks = -(-(WINDOW + CHUNK - 1) // kv.block_size) + 1
    assert max(held) <= 1 + window_blocks  # the sinks' block and the window (and a chunk): never more
    assert held[-1] <= 1 + WINDOW // kv.block_size + 2  # decoding: the sinks and the window alone


def test_models_with_windows_of_their_own_and_sinks_without_a_window_are_refused(make_llm):
    gemma_like = ArchConfig("gemma3", 100, 8, 16, 2, 2, 1, 4, 1e-6, 1e4, 64, True, sliding_window=8,
                            layer_types=("sliding_attention", "full_attention"))  # fmt: skip
    with pytest.raises(ValueError, match="sliding-window layers of its own"):
        gemma_like.streaming(16, 4)
    with pytest.raises(ValueError, match="with a sliding_window"):
        make_llm(attention_sinks=4)
    with pytest.raises(ValueError, match="speculative decoding does not work with streaming"):
        LLM(sliding_window=WINDOW, speculative_config={"method": "ngram", "num_speculative_tokens": 2},
            kv_cache_memory=16 * 2**20)
