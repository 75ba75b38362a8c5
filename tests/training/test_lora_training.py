"""`tokenmill train-lora` on the real model: chat pairs learn only their answers, plain text is
windowed, and a short run saves an adapter (float16) that lowers the training text's loss and
that tokenmill's loader reads."""

import json

import torch
from safetensors.torch import load_file

from tests.lora.adapters import hf_base
from tokenmill.config import LoRATrainingConfig
from tokenmill.lora.adapter import load_adapter
from tokenmill.training.lora import IGNORE, load_examples, train


def tokenizer_of(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def test_chat_pairs_carry_loss_on_the_answer_only_and_text_is_windowed(gguf_path, tmp_path):
    tokenizer = tokenizer_of(gguf_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Name a colour.", "response": "Blue, matey."}) + "\n")
    (ids, labels), = load_examples([pairs], tokenizer, max_len=128)
    learned = [t for t in labels if t != IGNORE]
    assert labels[: len(ids) - len(learned)] == [IGNORE] * (len(ids) - len(learned))
    assert tokenizer.decode(learned).startswith("Blue, matey.")
    assert "Name a colour." in tokenizer.decode(ids[: len(ids) - len(learned)])
    text = tmp_path / "code.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 40)
    windows = load_examples([text], tokenizer, max_len=32)
    assert all(len(w) <= 32 and w == l for w, l in windows) and len(windows) > 1
    assert sum(len(w) for w, _ in windows) == len(tokenizer(text.read_text())["input_ids"])


def test_a_short_run_lowers_the_loss_and_saves_an_adapter_both_loaders_read(gguf_path, tmp_path, llm):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": f"Arr, {w}!"}) + "\n"
                            for w in ("hello", "yes", "ship", "gold")))  # fmt: skip
    config = LoRATrainingConfig(rank=2, targets=("q_proj", "v_proj"), steps=6, batch_size=4, learning_rate=5e-3)
    losses = train(gguf_path, [data], tmp_path / "adapter", config)
    assert losses["loss_after"] < losses["loss_before"]
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.float16 for w in weights.values())
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 2
    from peft import PeftModel

    model = PeftModel.from_pretrained(hf_base(gguf_path), str(tmp_path / "adapter"))
    assert any("lora_B" in name and param.abs().sum() > 0 for name, param in model.named_parameters())
    adapter = load_adapter(tmp_path / "adapter", llm.engine.runner.model, max_rank=8)
    assert adapter.rank == 2 and len(adapter.deltas) == 30  # q and v fuse into each layer's qkv_proj
