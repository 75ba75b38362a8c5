"""What `auto` means for dtype, quantization and the KV cache: the fastest mode this machine runs
at a negligible cost in quality, chosen per machine and said in the log.

- dtype: on the CPU, bfloat16 products where the CPU has bfloat16 dot products (AVX-512 BF16 or
  AMX: 2.5-7x the float32 rate) and float32 elsewhere (bfloat16 there is emulated and slower); on
  CUDA bfloat16, or float16 where the GPU lacks it.
- quantization: a GGUF runs its own quantized blocks on the CPU (`gguf`), as llama.cpp does: a
  quarter of the bytes a decode step reads, the same values as the file (a Q4_1 file dequantized
  to float32 is those very numbers). Elsewhere none: quantized layers on other devices run with
  float32 activations only.
- kv_cache_dtype: int8 on the CPU alongside `gguf` chosen by auto: one byte per element with a
  scale per token and head, 3.8x the tokens in the same memory and less for attention to read.
  Measured on the default model (`tokenmill eval quality`, 8 windows of 256 tokens, against
  float32): the int8 KV alone costs KL 0.0007 nats (top-1 agreement 98.0%, perplexity 24.86
  against 24.84); the whole mode auto picks on a bfloat16 CPU, KL 0.0013 (96.6%, 24.88).
  Otherwise the model's dtype, as vLLM's `auto`.

`--dtype float32 --quantization none` runs the float32 model, as before `auto` chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tokenmill.kernels.cpu_info import BF16_DOT_PRODUCTS, cpu_features


@dataclass(frozen=True)
class Mode:
    dtype: str
    quantization: str
    kv_cache_dtype: str
    reasons: tuple[str, ...]  # one for each choice that auto made


def choose_mode(model: Path, device: torch.device, dtype: str | torch.dtype, quantization: str,
                kv_cache_dtype: str) -> Mode:
    """Resolves each `auto` among the three; the others are kept as given."""
    reasons = []
    if dtype == "auto":
        dtype, why = _dtype(device)
        reasons.append(f"dtype {dtype}: {why}")
    if quantization == "auto":
        quantization, why = _quantization(model, device)
        reasons.append(f"quantization {quantization}: {why}")
        if kv_cache_dtype == "auto" and quantization == "gguf":
            kv_cache_dtype = "int8"
            reasons.append("kv_cache_dtype int8: beside 4-bit weights on the CPU, at a measured KL to float32 "
                           "of 0.0007 (--kv-cache-dtype auto keeps the model's dtype when the weights are chosen)")
    return Mode(_name(dtype), quantization, kv_cache_dtype, tuple(reasons))


def _dtype(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "the GPU has bfloat16"
        return "float16", "the GPU has no bfloat16"
    if device.type == "cpu":
        features = [f for f in cpu_features() if f in BF16_DOT_PRODUCTS]
        if features:
            return "bfloat16", f"the CPU has bfloat16 dot products ({', '.join(features)})"
        return "float32", "the CPU has no bfloat16 dot products (AVX-512 BF16 or AMX)"
    return "float32", f"no faster precision is known on {device.type}"


def _quantization(model: Path, device: torch.device) -> tuple[str, str]:
    if not model.is_file():
        return "none", "the model is not a GGUF file"
    if device.type != "cpu":
        return "none", f"a GGUF's quantized blocks run on the CPU only, not on {device.type}"
    return "gguf", "a GGUF file runs its own quantized blocks"


def _name(dtype: str | torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
