"""Architectures by name: adding a family means adding one file and one line here."""

from __future__ import annotations

from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.causal_lm import CausalLM
from tokenmill.model.gemma3 import Gemma3ForCausalLM
from tokenmill.model.llama import LlamaForCausalLM

# Keys are GGUF `general.architecture` values and Hugging Face `model_type` values.
ARCHITECTURES: dict[str, type[CausalLM]] = {
    "llama": LlamaForCausalLM,
    "gemma3": Gemma3ForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,
}


def architecture_class(cfg: ArchConfig) -> type[CausalLM]:
    if cfg.architecture not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"architecture {cfg.architecture!r} is not supported (supported: {supported})")
    return ARCHITECTURES[cfg.architecture]


def build_model(cfg: ArchConfig, tp: TensorParallel = TensorParallel(),
                pp: PipelineParallel = PipelineParallel()) -> CausalLM:  # fmt: skip
    return architecture_class(cfg)(cfg, tp, pp)
