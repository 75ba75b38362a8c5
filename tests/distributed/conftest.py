import json

import pytest
import torch


@pytest.fixture(scope="package")
def one_kv_head_model(tmp_path_factory, gguf_path):
    """A small llama with 4 query heads and 1 KV head, random weights, the default tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                         initializer_range=0.2, max_position_embeddings=1024)  # peaked logits: no near-ties
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("one-kv-head")
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "model_type": "llama"}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              out / "model.safetensors")
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(out)
    return str(out)
