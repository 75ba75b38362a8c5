"""What a request says about moving its prompt's KV between instances (vLLM's `kv_transfer_params`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVTransferParams:
    """On a prefill instance, do_remote_decode: when the request ends, keep its prompt's KV for a
    decode instance to pull. On a decode instance, transfer_id: pull the prompt's KV (num_tokens
    tokens, the whole prompt) from the prefill instance instead of computing it."""

    do_remote_decode: bool = False
    transfer_id: str | None = None
    num_tokens: int = 0

    @classmethod
    def from_json(cls, body: dict) -> KVTransferParams:
        """From the request's `kv_transfer_params` object; raises ValueError on anything else."""
        unknown = set(body) - {"do_remote_decode", "transfer_id", "num_tokens"}
        if unknown:
            raise ValueError(f"kv_transfer_params has unknown fields: {', '.join(sorted(unknown))}")
        params = cls(bool(body.get("do_remote_decode", False)), body.get("transfer_id"), body.get("num_tokens", 0))
        if params.transfer_id is not None and not isinstance(params.transfer_id, str):
            raise ValueError("kv_transfer_params.transfer_id must be a string")
        if not isinstance(params.num_tokens, int) or params.num_tokens < 0:
            raise ValueError("kv_transfer_params.num_tokens must be a non-negative integer")
        return params

    def to_json(self) -> dict:
        return {"transfer_id": self.transfer_id, "num_tokens": self.num_tokens}
