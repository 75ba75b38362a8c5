"""tokenmill: an LLM inference serving engine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenmill.outputs import CompletionOutput, Logprob, RequestOutput
from tokenmill.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tokenmill.llm import LLM

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`tokenmill.LLM` on first use (PEP 562): it loads torch, which `tokenmill --help` and HTTP-only
    commands never need."""
    if name == "LLM":
        from tokenmill.llm import LLM

        return LLM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
