"""The runner's adapters: LoRA layers put into the model; adapters read from disk and kept in host
memory (at most max_cpu_loras, the least recently used dropped first), at most max_loras of them
in the layers' slots at a time (the least recently used, unused one makes room); and each step's
slot for each row."""

from __future__ import annotations

import importlib.util
from collections import Counter, OrderedDict
from pathlib import Path

import torch
from torch import nn

from tokenmill.config import LoRAConfig
from tokenmill.kernels.lora import LoRAKernel
from tokenmill.lora.adapter import AdapterError, LoRAAdapter, load_adapter
from tokenmill.lora.layers import DeltaKernel, LoRALinear, LoRAStep
from tokenmill.lora.request import LoRARequest

# tokenmill's names for the layers an adapter may target (q/k/v and gate/up fused)
LORA_LAYERS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class LoRAManager:
    def __init__(self, model: nn.Module, config: LoRAConfig, device: torch.device, dtype: torch.dtype) -> None:
        max_loras, max_rank = config.max_loras, config.max_lora_rank
        self.model, self.max_rank, self.max_host = model, max_rank, config.host_adapters
        self.step = LoRAStep(device)
        kernel = _delta_kernel(device, dtype)
        self.layers: dict[str, LoRALinear] = {}
        for name, module in list(model.named_modules()):
            if name.rpartition(".")[2] in LORA_LAYERS:
                self.layers[name] = LoRALinear(module, max_loras, max_rank, self.step, kernel, device, dtype)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, self.layers[name])
        self.slots: list[int | None] = [None] * max_loras  # the adapter id in each slot
        self._recent: OrderedDict[int, None] = OrderedDict()  # resident ids, least recently used first
        self._adapters: OrderedDict[int, LoRAAdapter] = OrderedDict()  # in host memory, least recently used first
        self._users: Counter[int] = Counter()  # live sequences per adapter id
        self._paths: dict[int, Path] = {}  # each id's adapter folder
        self.num_reads = self.num_loads = self.num_swaps = 0  # from disk; into a slot; into a slot in use

    def check(self, request: LoRARequest) -> None:
        """Reads the adapter into host memory if it is not there (AdapterError if it does not fit the model)."""
        lora_id = request.lora_int_id
        known = self._paths.get(lora_id)
        if known is not None and known != Path(request.lora_path):  # an id names one adapter: never serve another's
            raise AdapterError(f"lora_int_id {lora_id} already names the adapter at {known}, not {request.lora_path}")
        if lora_id in self._adapters:
            self._adapters.move_to_end(lora_id)
            return
        adapter = load_adapter(request.lora_path, self.model, self.max_rank)
        unknown = sorted(set(adapter.deltas) - set(self.layers))
        if unknown:
            raise AdapterError(f"the adapter targets {unknown[0]}, which has no LoRA layer")
        self._adapters[lora_id], self._paths[lora_id] = adapter, Path(request.lora_path)
        self.num_reads += 1
        self._trim(keep=lora_id)

    @property
    def num_host_adapters(self) -> int:
        return len(self._adapters)

    def acquire(self, request: LoRARequest) -> int:
        """The slot holding the request's adapter, loading it there if it is not; counts a user."""
        lora_id = request.lora_int_id
        if lora_id not in self._recent:
            self.check(request)
            self._load(lora_id, self._free_slot())
        self._recent.move_to_end(lora_id)
        self._users[lora_id] += 1
        return self.slots.index(lora_id)

    def release(self, lora_id: int) -> None:
        self._users[lora_id] -= 1

    def set_step(self, token_slots: list[int] | None) -> None:
        """The step's slot for each input row (-1: none; None: no row has an adapter)."""
        self.step.set(token_slots)

    def _free_slot(self) -> int:
        if None in self.slots:
            return self.slots.index(None)
        for lora_id in self._recent:  # least recently used first
            if self._users[lora_id] == 0:
                del self._recent[lora_id]
                self.num_swaps += 1
                return self.slots.index(lora_id)
        raise RuntimeError(f"all {len(self.slots)} LoRA slots hold adapters of running sequences (max_loras)")

    def _trim(self, keep: int) -> None:
        """Past max_cpu_loras host copies, drops the least recently used ones that no slot holds,
        except `keep`, read for a request that has not taken a slot yet (so until it does, one
        more copy may stay)."""
        spare = [i for i in self._adapters if i not in self._recent and i != keep]
        for lora_id in spare[: len(self._adapters) - self.max_host]:
            del self._adapters[lora_id]

    def _load(self, lora_id: int, slot: int) -> None:
        adapter = self._adapters[lora_id]
        for name, layer in self.layers.items():
            layer.set_slot(slot, adapter.deltas.get(name), adapter.rank)
        self.slots[slot] = lora_id
        self._recent[lora_id] = None
        self.num_loads += 1
        self._trim(keep=lora_id)


def _delta_kernel(device: torch.device, dtype: torch.dtype) -> DeltaKernel | None:
    """The C kernel for float32 on the CPU, the Triton one on CUDA where Triton is installed;
    elsewhere (None) the layers' PyTorch path runs."""
    if device.type == "cpu":
        return LoRAKernel.load() if dtype == torch.float32 else None
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        from tokenmill.kernels.triton_lora import TritonLoRAKernel  # triton is optional: imported here

        return TritonLoRAKernel()
    return None
