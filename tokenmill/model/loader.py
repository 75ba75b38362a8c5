"""Loading a model from a GGUF file or a Hugging Face directory into the same model object."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tokenmill.config import ModelConfig
from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.kernels.cpu_info import has_bf16_dot_products
from tokenmill.kernels.quant_matmul import QuantMatmul
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.bf16_products import enable_bf16_products
from tokenmill.model.gguf_file import read_gguf
from tokenmill.model.registry import architecture_class, build_model
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.quant.apply import install_quantized, quantize_model
from tokenmill.quant.tensor import QuantizedTensor

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: nn.Module
    arch: ArchConfig  # this rank's heads
    tokenizer: Tokenizer
    tp_size: int = 1  # the tensor-parallel ranks the model is split over
    pp: PipelineParallel = PipelineParallel()  # the pipeline stage it is (the whole model with one)


def load_model(cfg: ModelConfig, tp: TensorParallel = TensorParallel(),
               pp: PipelineParallel = PipelineParallel()) -> LoadedModel:  # fmt: skip
    """The model, or with several ranks this rank's part of it; `arch` then counts this rank's
    heads and layers (what its KV cache and attention hold)."""
    start = time.monotonic()
    path = cfg.model
    if path.is_dir():
        if cfg.quantization == "gguf":
            raise ValueError(f"quantization 'gguf' reads a GGUF file's own quantized weights; {path} is a "
                             "directory (use int8 or int4 to quantize its weights at load time)")
        arch, weights, tokenizer = _open_hf_dir(path)
    elif path.is_file():
        arch, weights, tokenizer = _open_gguf(path, keep_quantized=cfg.quantization == "gguf")
    else:
        raise FileNotFoundError(f"model not found: {path} is neither a GGUF file nor a model directory")
    if cfg.sliding_window is not None:
        arch = arch.streaming(cfg.sliding_window, cfg.attention_sinks)
    model = build_model(arch, tp, pp)
    quantized = model.load_weights(weights)
    kernel = QuantMatmul.load() if cfg.device.type == "cpu" else None
    gpu = cfg.device.type == "cuda" and importlib.util.find_spec("triton") is not None  # the Triton kernel
    if kernel is None and not gpu and cfg.quantization != "none":
        logger.warning("no quantized matrix kernel on %s: quantized layers dequantize their weights on every "
                       "call (correct, but slow)", cfg.device)
    if quantized:
        install_quantized(model, quantized, kernel, gpu)
    elif cfg.quantization in ("int8", "int4"):
        quantize_model(model, cfg.quantization, cfg.quantization_group_size, kernel, gpu)
    model = model.to(device=cfg.device, dtype=cfg.activation_dtype).eval().requires_grad_(False)
    if cfg.bf16_products:
        if not has_bf16_dot_products():
            logger.warning("this CPU has no bfloat16 dot products (AVX-512 BF16 or AMX): bfloat16 products "
                           "run emulated, slower than float32 (dtype float32 is faster here)")
        enable_bf16_products(model)
    logger.info("loaded %s (%s, %s, quantization %s) in %.1f s", path.name, arch.architecture, cfg.dtype,
                cfg.quantization, time.monotonic() - start)
    return LoadedModel(model, arch.for_rank(tp, pp), tokenizer, tp.size, pp)


# GGUF tensor names (llama.cpp's) to Hugging Face names, which the architectures load; a layer's
# tensors are named by its architecture (CausalLM.gguf_layer_names).
_GGUF_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_GGUF_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


Weights = Iterator[tuple[str, torch.Tensor | QuantizedTensor]]


def _open_gguf(path: Path, keep_quantized: bool) -> tuple[ArchConfig, Weights, Tokenizer]:
    gguf = read_gguf(path)
    has_output = "output.weight" in gguf.tensor_names()
    arch = ArchConfig.from_gguf_metadata(gguf.metadata, has_output_weight=has_output)
    tensors = _hf_named_gguf_tensors(gguf.tensors(keep_quantized), arch)
    return arch, tensors, Tokenizer.from_gguf_metadata(gguf.metadata)


def _hf_named_gguf_tensors(tensors: Weights, arch: ArchConfig) -> Weights:
    architecture = architecture_class(arch)
    for name, tensor in tensors:
        hf_name = _hf_name(name, architecture.gguf_layer_names)
        yield hf_name, architecture.from_gguf(hf_name, tensor, arch)


def _hf_name(gguf_name: str, layer_names: dict[str, str]) -> str:
    base, _, kind = gguf_name.rpartition(".")
    if base in _GGUF_TOP_LEVEL:
        return f"{_GGUF_TOP_LEVEL[base]}.{kind}"
    match = _GGUF_LAYER_NAME.fullmatch(gguf_name)
    if match is None or match.group(2) not in layer_names:
        raise ValueError(f"unknown GGUF tensor {gguf_name!r}")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{layer_names[part]}.{kind}"


def _open_hf_dir(path: Path) -> tuple[ArchConfig, Weights, Tokenizer]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a model directory: no config.json")
    arch = ArchConfig.from_hf_config(json.loads(config_file.read_text()))
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path} has no *.safetensors weights")
    return arch, _safetensors_tensors(shards), Tokenizer.from_pretrained_dir(path)


def _safetensors_tensors(shards: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
