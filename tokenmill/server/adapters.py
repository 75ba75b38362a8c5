"""The server's LoRA adapters by name, as vLLM serves them: a request names one in `model`,
/v1/models lists them under the base model, and /v1/load_lora_adapter and /v1/unload_lora_adapter
change the set at run time."""

from __future__ import annotations

import itertools
from pathlib import Path

from tokenmill.lora.request import LoRARequest
from tokenmill.server.errors import APIError, bad_request


class AdapterRegistry:
    def __init__(self, base_name: str, enabled: bool, modules: dict[str, str]) -> None:
        self.base_name, self.enabled = base_name, enabled
        self._ids = itertools.count(1)
        self._adapters: dict[str, LoRARequest] = {}
        for name, path in modules.items():
            self.load(name, path)

    def resolve(self, model: str) -> LoRARequest | None:
        """None for the base model, the adapter for an adapter's name, a 404 for anything else."""
        if model == self.base_name:
            return None
        if model in self._adapters:
            return self._adapters[model]
        served = ", ".join([self.base_name, *self._adapters])
        raise APIError(404, f"the model {model!r} does not exist; this server serves {served}", param="model",
                       code="model_not_found")

    def load(self, name: str, path: str) -> LoRARequest:
        """Registers an adapter (the engine reads it at its first request); a 400 if it cannot be."""
        if not self.enabled:
            raise bad_request("this server serves no adapters: start it with --enable-lora", "lora_name")
        if not name or name == self.base_name or name in self._adapters:
            raise bad_request(f"lora_name {name!r} is empty, the base model's, or already loaded", "lora_name")
        if not (Path(path) / "adapter_config.json").is_file():
            raise bad_request("lora_path is not a PEFT LoRA adapter folder (it has no adapter_config.json)",
                              "lora_path")
        self._adapters[name] = LoRARequest(name, next(self._ids), path)
        return self._adapters[name]

    def unload(self, name: str) -> None:
        """Later requests cannot name it; requests already running finish with it."""
        if self._adapters.pop(name, None) is None:
            raise APIError(404, f"no adapter named {name!r} is loaded", param="lora_name", code="model_not_found")

    def cards(self, created: int = 0) -> list[dict]:
        base = {"id": self.base_name, "object": "model", "created": created, "owned_by": "tokenmill",
                "root": self.base_name, "parent": None}
        return [base] + [{"id": name, "object": "model", "created": created, "owned_by": "tokenmill",
                          "root": str(request.lora_path), "parent": self.base_name}
                         for name, request in self._adapters.items()]  # fmt: skip
