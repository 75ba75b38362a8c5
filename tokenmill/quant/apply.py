"""Putting quantized layers into a loaded model: int8/int4 quantized from its float weights, or
a GGUF file's own quantized matrices. Works on any architecture built from nn.Linear and
nn.Embedding; a linear layer tied to an embedding (the output layer of most small models) shares
its quantized matrix, as the float model shared the weight."""

from __future__ import annotations

from torch import nn

from tokenmill.kernels.quant_matmul import QuantMatmul
from tokenmill.quant.gpu_packing import pack_for_gpu
from tokenmill.quant.linear import QuantEmbedding, QuantLinear, TritonQuantLinear
from tokenmill.quant.packing import pack
from tokenmill.quant.tensor import QuantizedTensor, quantize_int4, quantize_int8

OUTPUT_LAYER = "lm_head"


def quantize_model(model: nn.Module, method: str, group_size: int, kernel: QuantMatmul | None,
                   gpu: bool = False) -> None:  # fmt: skip
    """int8: every matrix per output channel. int4: the decoder's linear layers per group of
    `group_size` input channels; the embedding and output layer stay int8, as llama.cpp's 4-bit
    mixes keep them wider: each row of the output layer is one token's logit."""
    tied = {linear for linears in _tied_linears(model).values() for linear in linears}
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and name not in tied):
            wide = method == "int8" or isinstance(module, nn.Embedding) or name == OUTPUT_LAYER
            w = module.weight.detach()  # or the scales' autograd graph would keep the float weights alive
            weights[name] = quantize_int8(w) if wide else quantize_int4(w, group_size)
    install_quantized(model, weights, kernel, gpu)


def install_quantized(model: nn.Module, weights: dict[str, QuantizedTensor], kernel: QuantMatmul | None,
                      gpu: bool = False) -> None:  # fmt: skip
    """Replaces each named nn.Linear or nn.Embedding with a quantized layer over its matrix: in the
    CPU kernel's layout, or with gpu, in the Triton kernel's."""
    ties = _tied_linears(model)
    for name, weight in weights.items():
        module = model.get_submodule(name)
        if tuple(module.weight.shape) != tuple(weight.shape):
            raise ValueError(f"quantized {name} is {tuple(weight.shape)}, the layer {tuple(module.weight.shape)}")
        bias = getattr(module, "bias", None)
        layer = TritonQuantLinear(pack_for_gpu(weight), bias) if gpu else QuantLinear(pack(weight), bias, kernel)
        if hasattr(module, "shard_ids"):  # a merged layer's shards stay known (LoRA places its deltas by them)
            layer.shard_ids, layer.output_sizes = module.shard_ids, module.output_sizes
        # a tensor-parallel layer that communicates keeps doing so around the quantized product
        replace = getattr(module, "quantized", lambda quantized: quantized)
        if isinstance(module, nn.Embedding):
            _replace(model, name, replace(QuantEmbedding(layer)))
            for linear in ties.get(name, []):
                _replace(model, linear, layer)
        else:
            _replace(model, name, replace(layer))


def _tied_linears(model: nn.Module) -> dict[str, list[str]]:
    """Embedding name -> the linear layers that share its weight."""
    embeddings = {id(m.weight): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    ties: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module.weight) in embeddings:
            ties.setdefault(embeddings[id(module.weight)], []).append(name)
    return ties


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)

