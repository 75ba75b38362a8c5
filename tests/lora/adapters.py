"""LoRA adapters made with peft on the default model, for the tests: random A and B, saved in
PEFT's format, and the peft model kept as the reference."""

import copy
import functools

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_base(gguf_path):
    """A fresh transformers model of the GGUF, to wrap: peft changes the model it is given in place."""
    return copy.deepcopy(_read_base(gguf_path))


@functools.cache
def _read_base(gguf_path):
    """The GGUF read once per session: transformers dequantizes it in Python, for seconds each time."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32).eval()


def make_adapter(gguf_path, path, seed: int, rank: int, targets: list[str], rslora: bool = False):
    """A peft adapter with random A and B (peft starts B at zero, which would change nothing)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(hf_base(gguf_path), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                           use_rslora=rslora, lora_dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    model.save_pretrained(str(path))
    return model.eval()
