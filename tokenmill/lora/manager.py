"""The runner's adapters: LoRA layers put into the model, adapters read from disk once and kept
in host memory, at most max_loras of them in the layers' slots at a time (the least recently
used, unused one makes room), and each step's grouping of tokens by slot."""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch
from torch import nn

from tokenmill.lora.adapter import AdapterError, LoRAAdapter, load_adapter
from tokenmill.lora.layers import LoRALinear, LoRAStep
from tokenmill.lora.request import LoRARequest

# tokenmill's names for the layers an adapter may target (q/k/v and gate/up fused)
LORA_LAYERS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class LoRAManager:
    def __init__(self, model: nn.Module, max_loras: int, max_rank: int, device: torch.device,
                 dtype: torch.dtype) -> None:  # fmt: skip
        self.model, self.max_rank = model, max_rank
        self.step = LoRAStep()
        self.layers: dict[str, LoRALinear] = {}
        for name, module in list(model.named_modules()):
            if name.rpartition(".")[2] in LORA_LAYERS:
                self.layers[name] = LoRALinear(module, max_loras, max_rank, self.step, device, dtype)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, self.layers[name])
        self.slots: list[int | None] = [None] * max_loras  # the adapter id in each slot
        self._recent: OrderedDict[int, None] = OrderedDict()  # resident ids, least recently used first
        self._adapters: dict[int, LoRAAdapter] = {}  # read once, kept in host memory
        self._users: Counter[int] = Counter()  # live sequences per adapter id
        self.num_loads = self.num_swaps = 0

    def check(self, request: LoRARequest) -> None:
        """Reads the adapter if it was not yet (AdapterError if it does not fit the model)."""
        if request.lora_int_id not in self._adapters:
            adapter = load_adapter(request.lora_path, self.model, self.max_rank)
            unknown = sorted(set(adapter.deltas) - set(self.layers))
            if unknown:
                raise AdapterError(f"the adapter targets {unknown[0]}, which has no LoRA layer")
            self._adapters[request.lora_int_id] = adapter

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

    def set_step(self, token_slots: list[int] | None, device: torch.device) -> None:
        """Groups the step's tokens by slot (token_slots: one per input row, -1 for none)."""
        self.step.rows.clear()
        if token_slots is None:
            return
        slots = torch.tensor(token_slots)
        for slot in sorted(set(token_slots) - {-1}):
            self.step.rows[slot] = (slots == slot).nonzero().squeeze(1).to(device)

    def _free_slot(self) -> int:
        if None in self.slots:
            return self.slots.index(None)
        for lora_id in self._recent:  # least recently used first
            if self._users[lora_id] == 0:
                del self._recent[lora_id]
                self.num_swaps += 1
                return self.slots.index(lora_id)
        raise RuntimeError(f"all {len(self.slots)} LoRA slots hold adapters of running sequences (max_loras)")

    def _load(self, lora_id: int, slot: int) -> None:
        adapter = self._adapters[lora_id]
        for name, layer in self.layers.items():
            layer.set_slot(slot, adapter.deltas.get(name), adapter.rank)
        self.slots[slot] = lora_id
        self._recent[lora_id] = None
        self.num_loads += 1
