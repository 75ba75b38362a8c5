"""A Hugging Face model directory and the GGUF it was made from load into the same model."""

import json

import pytest
import torch

from tokenmill import SamplingParams


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gguf_path):
    """The default GGUF written out by transformers as config.json + safetensors + tokenizer.json."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("hf-model")
    kwargs = {"gguf_file": gguf_path.name}
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # transformers refuses to save a GGUF-loaded model itself
    (out / "config.json").write_text(json.dumps(config))
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}, out / "model.safetensors")
    AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs).save_pretrained(out)
    return out


def test_hf_directory_loads_the_same_model_as_the_gguf(make_llm, hf_dir):
    from_gguf, from_dir = make_llm(), make_llm(model=str(hf_dir))
    assert type(from_dir.engine.runner.model) is type(from_gguf.engine.runner.model)
    assert from_dir.engine.arch == from_gguf.engine.arch
    gguf_weights = from_gguf.engine.runner.model.state_dict()
    for name, weight in from_dir.engine.runner.model.state_dict().items():
        torch.testing.assert_close(weight, gguf_weights[name], rtol=0, atol=0, msg=name)

    text = "The capital of France is"
    assert from_dir.tokenizer.encode(text) == from_gguf.tokenizer.encode(text)
    params = SamplingParams(temperature=0, max_tokens=12)
    [a], [b] = from_gguf.generate(text, params, use_tqdm=False), from_dir.generate(text, params, use_tqdm=False)
    assert a.outputs[0].text == b.outputs[0].text


def test_directory_without_config_is_refused(tmp_path):
    from tokenmill import LLM

    with pytest.raises(FileNotFoundError, match="config.json"):
        LLM(model=tmp_path)
