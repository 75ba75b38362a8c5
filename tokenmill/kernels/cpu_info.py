"""What this CPU is and which matrix units it has, read at run time: the machines differ (AMD EPYC;
Intel Xeon with and without AMX), so kernels and precisions are chosen per machine, never assumed."""

from __future__ import annotations

import platform
from pathlib import Path

# The CPU's matrix and vector units that decide which kernels and precisions are fast on it.
MATRIX_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_DOT_PRODUCTS = ("avx512_bf16", "amx_bf16")  # either makes bfloat16 products faster than float32


def cpu_model() -> str:
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    return next((line.split(":", 1)[1].split() for line in _cpuinfo() if line.startswith("flags")), [])


def cpu_features() -> list[str]:
    """Which of MATRIX_FEATURES this CPU has."""
    flags = cpu_flags()
    return [feature for feature in MATRIX_FEATURES if feature in flags]


def has_bf16_dot_products() -> bool:
    return any(feature in cpu_flags() for feature in BF16_DOT_PRODUCTS)


def _cpuinfo() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
