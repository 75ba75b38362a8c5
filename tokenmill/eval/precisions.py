"""The precisions a user can choose, as the engine options that select them (EngineConfig.create's keywords)."""

from __future__ import annotations

REFERENCE = "float32"  # the unquantized model every other precision is compared against
_FLOAT32 = {"dtype": "float32", "quantization": "none", "kv_cache_dtype": "auto"}  # nothing left to auto
PRECISIONS: dict[str, dict[str, str]] = {
    "float32": _FLOAT32,
    "bfloat16": {**_FLOAT32, "dtype": "bfloat16"},
    "int8": {**_FLOAT32, "quantization": "int8"},
    "int4": {**_FLOAT32, "quantization": "int4"},  # the group size is the engine's quantization_group_size
    "gguf": {**_FLOAT32, "quantization": "gguf"},
    "kv-int8": {**_FLOAT32, "kv_cache_dtype": "int8"},
    # The fastest on a CPU with bfloat16 dot products: 4-bit decode, bfloat16 prefill, one-byte KV.
    "gguf+bfloat16": {"quantization": "gguf", "dtype": "bfloat16", "kv_cache_dtype": "auto"},
    "gguf+bfloat16+kv-int8": {"quantization": "gguf", "dtype": "bfloat16", "kv_cache_dtype": "int8"},
}


def parse_precisions(text: str) -> list[str]:
    """A comma-separated list of PRECISIONS' names, in the order given, without repeats."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in PRECISIONS]
    if unknown or not names:
        raise ValueError(f"precisions must be among {', '.join(PRECISIONS)}; got {text!r}")
    return names
