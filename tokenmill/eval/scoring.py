"""Scoring a text through the engine's own path: its model, its KV pool and its attention backend.

The text runs as one request whose prompt rows the runner returns, so PagedAttention writes every
token's K and V into pool blocks and attention reads them back: a quantized KV cache costs here
what it costs in serving.
"""

from __future__ import annotations

import torch

from tokenmill.engine.engine import LLMEngine


def prompt_logprobs(engine: LLMEngine, token_ids: list[int]) -> torch.Tensor:
    """[T - 1, V] float32: row i is the log-distribution of the token after token_ids[: i + 1]."""
    if not 2 <= len(token_ids) <= engine.max_model_len:
        raise ValueError(f"can score 2 to {engine.max_model_len} tokens (max_model_len), got {len(token_ids)}")
    scores = engine.score_prompt(token_ids).prompt_logprobs
    assert scores is not None
    return scores
