"""`auto` chooses the fast mode for this machine and says why; explicit choices are kept."""

import logging
from pathlib import Path

import pytest
import torch

from tokenmill.auto_mode import choose_mode
from tokenmill.config import EngineConfig

CPU = torch.device("cpu")


def cpu_has_bf16_dot_products() -> bool:
    """Read here from /proc/cpuinfo's flags, independently of tokenmill.kernels.cpu_info."""
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_a_gguf_on_the_cpu_runs_its_own_blocks_in_the_cpus_fastest_precision(gguf_path):
    mode = choose_mode(gguf_path, CPU, "auto", "auto", "auto")
    assert mode.dtype == ("bfloat16" if cpu_has_bf16_dot_products() else "float32")
    assert (mode.quantization, mode.kv_cache_dtype) == ("gguf", "int8")
    assert len(mode.reasons) == 3 and all(reason.split()[0] in ("dtype", "quantization", "kv_cache_dtype")
                                          for reason in mode.reasons)


def test_explicit_choices_are_kept_and_float32_none_is_the_float32_model(gguf_path):
    mode = choose_mode(gguf_path, CPU, "float32", "none", "auto")
    assert (mode.dtype, mode.quantization, mode.kv_cache_dtype, mode.reasons) == ("float32", "none", "auto", ())
    assert choose_mode(gguf_path, CPU, "auto", "gguf", "auto").kv_cache_dtype == "auto"  # vLLM's meaning
    assert choose_mode(gguf_path, CPU, "float32", "auto", "auto").dtype == "float32"


def test_a_model_directory_is_not_quantized(tmp_path):
    mode = choose_mode(tmp_path, CPU, "float32", "auto", "auto")
    assert (mode.quantization, mode.kv_cache_dtype) == ("none", "auto")


def test_the_engine_config_logs_what_auto_chose(caplog):
    with caplog.at_level(logging.INFO, logger="tokenmill.config"):
        config = EngineConfig.create()
    assert config.model.quantization == "gguf" and config.cache.kv_cache_dtype == "int8"
    assert config.model.dtype == (torch.bfloat16 if cpu_has_bf16_dot_products() else torch.float32)
    assert sum("auto: " in record.message for record in caplog.records) == 3


def test_an_unknown_quantization_names_auto_among_the_choices():
    with pytest.raises(ValueError, match="auto"):
        EngineConfig.create(quantization="int3")
