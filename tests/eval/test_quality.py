"""Quality against float32 through the engine's own path, with perplexity checked against transformers."""

import math

import pytest
import torch
import torch.nn.functional as F

from tokenmill.bench.workloads import tokenize_corpus
from tokenmill.eval.quality import QualityResult, evaluate, kv_bytes_per_token, text_windows, weight_bytes


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def windows(engines) -> list[list[int]]:
    return text_windows(engines["float32"].tokenizer, 2, 64)


@pytest.fixture(scope="module")
def float32(engines, windows) -> QualityResult:
    [result] = evaluate(engines["float32"], {"float32": engines["float32"]}, windows)
    return result


def test_float32_against_itself_is_exact(float32):
    assert float32.num_positions == 2 * 63
    assert abs(float32.mean_kl) <= 1e-6 and float32.top1_agreement == 1.0


def test_perplexity_matches_transformers(float32, windows, hf_model):
    with torch.no_grad():
        nll = sum(F.cross_entropy(hf_model(torch.tensor([w])).logits[0, :-1], torch.tensor(w[1:]), reduction="sum")
                  for w in windows)
    assert float32.perplexity == pytest.approx(math.exp(nll.item() / float32.num_positions), rel=1e-3)


def test_bfloat16_is_close_to_float32_but_not_equal(engines, windows, float32):
    [bfloat16] = evaluate(engines["float32"], {"bfloat16": engines["bfloat16"]}, windows)
    assert 0 < bfloat16.mean_kl < 0.02
    assert bfloat16.top1_agreement > 0.85
    assert bfloat16.perplexity == pytest.approx(float32.perplexity, rel=0.05)


def test_weight_bytes_count_the_tied_embedding_once(engines, hf_model):
    float32 = weight_bytes(engines["float32"].runner.model)
    assert float32 == 4 * hf_model.num_parameters()  # transformers counts shared parameters once too
    # bfloat16 on the CPU: the matrices in bfloat16, the output layer's its own (the float32
    # embedding stays, untied), the norms float32.
    arch = engines["float32"].arch
    embedding = arch.vocab_size * arch.hidden_size
    norms = sum(p.numel() for name, p in hf_model.named_parameters() if "norm" in name)
    matrices = hf_model.num_parameters() - embedding - norms
    assert weight_bytes(engines["bfloat16"].runner.model) == 4 * (embedding + norms) + 2 * (matrices + embedding)


def test_kv_bytes_per_token_are_k_and_v_of_every_layer(engines):
    arch = engines["float32"].arch
    float32 = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * 4
    assert kv_bytes_per_token(engines["float32"]) == float32
    assert kv_bytes_per_token(engines["bfloat16"]) == float32  # bfloat16 on the CPU keeps a float32 KV cache


def test_windows_are_evenly_spaced_from_the_start_to_the_end(engines, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("One two three four five six seven eight nine ten.\n\nEleven twelve thirteen fourteen.\n")
    tokenizer = engines["float32"].tokenizer
    token_ids = tokenize_corpus(tokenizer, text).token_ids
    windows = text_windows(tokenizer, 3, 6, text)
    spacing = (len(token_ids) - 6) // 2
    assert windows == [token_ids[0:6], token_ids[spacing : spacing + 6], token_ids[2 * spacing : 2 * spacing + 6]]
    with pytest.raises(ValueError, match="tokens"):
        text_windows(tokenizer, 1, len(token_ids) + 1, text)
