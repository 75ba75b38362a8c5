"""A PEFT LoRA adapter read into tokenmill's layers: per target layer, A [shards * r, in] and B
[out, shards * r] with the scaling folded into B, so that the delta is (x A^T) B^T.

tokenmill fuses q/k/v into one qkv_proj and gate/up into one gate_up_proj; an adapter's
matrices for those go to their shard: the shards' A stacked, and B block-placed (shard s's rows
of the output take only shard s's rank columns), exactly the separate products. Scaling is
alpha / r, or alpha / sqrt(r) with rsLoRA.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tokenmill.model.layers import shard_rows
from tokenmill.model.parallel_layers import RowParallelLinear, ShardedMergedLinear

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<parent>.+)\.(?P<module>\w+)\.lora_(?P<which>[AB])\.weight$")


class AdapterError(ValueError):
    """An adapter that does not fit the model; the message says what."""


@dataclass(frozen=True)
class LayerDelta:
    a: torch.Tensor  # [shards * r, in] float32
    b: torch.Tensor  # [out, shards * r] float32, scaling folded in


@dataclass(frozen=True)
class LoRAAdapter:
    rank: int
    deltas: dict[str, LayerDelta]  # tokenmill layer name (model.layers.0.self_attn.qkv_proj) -> its delta


def load_adapter(path: Path, model: nn.Module, max_rank: int) -> LoRAAdapter:
    path = Path(path)
    config_path, weights_path = path / "adapter_config.json", path / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterError(f"{path} is not a PEFT LoRA adapter (needs adapter_config.json and adapter_model.safetensors)")
    config = json.loads(config_path.read_text())
    rank, alpha = int(config.get("r", 8)), float(config.get("lora_alpha", 8))
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} exceeds max_lora_rank {max_rank}")
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters are not supported")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(f"adapter weight {key!r} is not a LoRA A/B matrix of a linear layer")
        if match["module"] not in TARGETS:
            raise AdapterError(f"adapter targets {match['module']!r}; supported: {', '.join(TARGETS)}")
        pairs.setdefault((match["parent"], match["module"]), {})[match["which"]] = tensor.float()
    packed = {shard: name for name, shards in model.packed_modules_mapping.items() for shard in shards}
    layers: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for (parent, module), ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{parent}.{module}: lora_A and lora_B must both be present")
        layer_name = f"{parent}.{packed.get(module, module)}"
        layers.setdefault(layer_name, {})[module] = (ab["A"], ab["B"] * scaling)
    elsewhere = getattr(model, "on_other_stage", lambda name: False)  # layers another pipeline stage holds
    deltas = {name: _fused(model, name, shards, rank) for name, shards in layers.items()
              if not elsewhere(f"{name}.weight")}  # fmt: skip
    return LoRAAdapter(rank, deltas)


def _fused(model: nn.Module, name: str, shards: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int) -> LayerDelta:
    try:
        layer = model.get_submodule(name)
    except AttributeError as exc:
        raise AdapterError(f"the adapter targets {name}, which the model does not have") from exc
    shard_ids = getattr(layer, "shard_ids", None) or (None,)  # a merged layer's, also once quantized
    a = torch.zeros(len(shard_ids) * rank, layer.in_features)
    b = torch.zeros(layer.out_features, len(shard_ids) * rank)
    for i, shard in enumerate(shard_ids):
        key = shard if shard is not None else name.rpartition(".")[2]
        if key not in shards:
            continue  # this shard is not a target: its delta is zero
        shard_a, shard_b = _rank_part(getattr(layer, "base", layer), shard, *shards[key])
        first, rows = (0, layer.out_features) if shard is None else shard_rows(layer, shard)
        if shard_a.shape != (rank, layer.in_features) or shard_b.shape != (rows, rank):
            raise AdapterError(f"{name} {key}: lora_A {tuple(shard_a.shape)} and lora_B {tuple(shard_b.shape)} do "
                               f"not fit the base layer ({rows} x {layer.in_features}) at rank {rank}")
        a[i * rank : (i + 1) * rank] = shard_a
        b[first : first + rows, i * rank : (i + 1) * rank] = shard_b
    return LayerDelta(a, b)


def _rank_part(layer: nn.Module, shard: str | None, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B as one tensor-parallel rank holds them (as they are, with one rank): a
    column-parallel layer's rank holds its rows of B; a row-parallel one's, its input columns of A,
    and its partial delta joins the base product's sum over ranks."""
    if isinstance(layer, ShardedMergedLinear) and shard is not None and b.shape[0] == layer.sources[shard][0]:
        return a, layer.output_part(b, shard)
    if isinstance(layer, RowParallelLinear) and a.shape[1] == layer.in_features * layer.tp.size:
        return layer.input_part(a), b
    return a, b
