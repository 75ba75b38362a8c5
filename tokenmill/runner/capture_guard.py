"""What may run in torch while a step is captured: nothing that computes.

A captured step is replayed as its recorded kernel calls alone, so any tensor operation that
computes or writes (an in-place `mul_`, a `copy_`, an `out=` product, a hook's arithmetic, a
LoRA delta written in torch) would be silently dropped on replay. The guard sits at the
dispatcher (a TorchDispatchMode sees every aten operation, whoever calls it, after composite
operations have resolved) and lets through only two kinds:

- views: operations whose schema may return an alias of their input *and* whose results do share
  its storage (`contiguous`, `flatten`, `to` and `reshape` may alias or copy; a copy is refused);
- allocations: `empty`-like operations, whose tensors the capture keeps alive for the replay.

Anything else, and anything whose schema mutates an argument (in place or `out=`), is refused:
the first one is named in `refusal`, and the caller keeps that step eager. Plain tensor metadata
(`data_ptr`, `size`, `stride`) never reaches the dispatcher.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALLOCATIONS = {"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided", "aten::new_empty_strided"}


class CaptureGuard(TorchDispatchMode):
    """Open while a step is captured; afterwards `refusal` names the first operation that would not
    replay (None if every one would) and `allocated` holds every tensor the step allocated."""

    def __init__(self) -> None:
        super().__init__()
        self.allocated: list[torch.Tensor] = []
        self.refusal: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        result = func(*args, **(kwargs or {}))
        if self.refusal is None:
            kind = operation_kind(func, args, result)
            if kind == "allocation":
                self.allocated.append(result)
            elif kind != "view":
                self.refusal = str(func)
        return result


def operation_kind(func: torch._ops.OpOverload, args: tuple, result: object) -> str:
    """"view", "allocation", or "computes" (which includes every mutation)."""
    schema = func._schema
    if schema.is_mutable:
        return "computes"
    if schema.name in ALLOCATIONS:
        return "allocation"
    if func.is_view and _shares_storage(result, args):
        return "view"
    return "computes"


def _shares_storage(result: object, args: tuple) -> bool:
    """Whether every tensor of the result lies in the storage of the first argument."""
    if not args or not isinstance(args[0], torch.Tensor):
        return False
    tensors = result if isinstance(result, (tuple, list)) else (result,)
    storage = args[0].untyped_storage().data_ptr()
    return all(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() == storage for t in tensors)
