"""Architectures by name: adding a family means adding one file and one line here."""

from __future__ import annotations

from torch import nn

from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.llama import LlamaForCausalLM

# Keys are GGUF `general.architecture` values and Hugging Face `model_type` values.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "llama": LlamaForCausalLM,
}


def build_model(cfg: ArchConfig, tp: TensorParallel = TensorParallel(),
                pp: PipelineParallel = PipelineParallel()) -> nn.Module:  # fmt: skip
    if cfg.architecture not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"architecture {cfg.architecture!r} is not supported (supported: {supported})")
    return ARCHITECTURES[cfg.architecture](cfg, tp, pp)
