"""What a precision costs in quality: its next-token distributions against the float32 model's.

On windows of held-out text, every position's distribution under each precision is compared with
the reference's, window by window, so that only one window's distributions are ever in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenmill.bench.workloads import CORPUS_PATH, TextTokenizer, tokenize_corpus
from tokenmill.engine.engine import LLMEngine
from tokenmill.eval.scoring import prompt_logprobs


@dataclass(frozen=True)
class QualityResult:
    precision: str
    perplexity: float
    mean_kl: float  # KL(p_reference || p_precision) in nats, averaged over the scored positions
    top1_agreement: float  # fraction of positions whose most likely token is the reference's
    num_positions: int
    weight_bytes: int
    kv_bytes_per_token: float


@dataclass
class _Tally:
    nll: float = 0.0
    kl: float = 0.0
    agreements: int = 0
    positions: int = 0

    def add(self, reference: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor) -> None:
        """reference, logprobs: [T, V] log-distributions at the same positions; targets: [T] the true tokens."""
        self.nll -= logprobs.gather(1, targets[:, None]).double().sum().item()
        kl = F.kl_div(logprobs, reference, reduction="none", log_target=True).sum(-1)
        self.kl += kl.double().sum().item()
        self.agreements += int((logprobs.argmax(-1) == reference.argmax(-1)).sum())
        self.positions += len(targets)

    def result(self, precision: str, engine: LLMEngine) -> QualityResult:
        n = self.positions
        return QualityResult(precision, math.exp(self.nll / n), self.kl / n, self.agreements / n, n,
                             weight_bytes(engine.runner.model), kv_bytes_per_token(engine))


def text_windows(tokenizer: TextTokenizer, num_windows: int, window_tokens: int,
                 path: Path = CORPUS_PATH) -> list[list[int]]:
    """num_windows runs of window_tokens tokens, evenly spaced from the text's start to its end."""
    token_ids = tokenize_corpus(tokenizer, path).token_ids
    if num_windows < 1 or not 2 <= window_tokens <= len(token_ids):
        raise ValueError(f"need at least one window of 2 to {len(token_ids)} tokens (the text's length), "
                         f"got {num_windows} of {window_tokens}")
    spacing = (len(token_ids) - window_tokens) // max(num_windows - 1, 1)
    return [token_ids[i * spacing : i * spacing + window_tokens] for i in range(num_windows)]


def evaluate(reference: LLMEngine, engines: Mapping[str, LLMEngine], windows: list[list[int]],
             on_window: Callable[[], None] = lambda: None) -> list[QualityResult]:
    """Each engine (by precision name) against the reference engine, over every window's positions."""
    tallies = {name: _Tally() for name in engines}
    for window in windows:
        expected = prompt_logprobs(reference, window)
        targets = torch.tensor(window[1:], device=expected.device)
        for name, engine in engines.items():
            tallies[name].add(expected, prompt_logprobs(engine, window), targets)
        on_window()
    return [tallies[name].result(name, engine) for name, engine in engines.items()]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and persistent buffers, each tensor once (a tied embedding too)."""
    tensors = model.state_dict(keep_vars=True).values()
    return sum(nbytes for _, nbytes in {(t.data_ptr(), t.nbytes) for t in tensors})


def kv_bytes_per_token(engine: LLMEngine) -> float:
    return engine.runner.kv_size.block_bytes / engine.runner.block_size
