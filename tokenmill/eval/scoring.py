"""Scoring a text through the engine's own path: its model, its KV pool and its attention backend.

The text runs as one prefill of one sequence, so PagedAttention writes every token's K and V into
pool blocks and attention reads them back: a quantized KV cache costs here what it costs in serving.
"""

from __future__ import annotations

import torch

from tokenmill.engine.engine import LLMEngine
from tokenmill.engine.scheduler import SchedulerOutput
from tokenmill.engine.sequence import Sequence
from tokenmill.runner.batch import prepare_input
from tokenmill.sampling_params import SamplingParams


@torch.inference_mode()
def prompt_logprobs(engine: LLMEngine, token_ids: list[int]) -> torch.Tensor:
    """[T - 1, V] float32: row i is the log-distribution of the token after token_ids[: i + 1]."""
    if not 2 <= len(token_ids) <= engine.max_model_len:
        raise ValueError(f"can score 2 to {engine.max_model_len} tokens (max_model_len), got {len(token_ids)}")
    seq = Sequence(seq_id=-1, request_id="prompt_logprobs", index=0, prompt_token_ids=list(token_ids),
                   params=SamplingParams())
    engine.block_manager.allocate(seq.block_table, seq.num_tokens)
    try:
        hidden = _prefill(engine, seq)
    finally:
        engine.block_manager.free(seq.block_table)
    logits = engine.runner.model.compute_logits(hidden[:-1])  # the last token predicts past the text
    return torch.log_softmax(logits, dim=-1)


def _prefill(engine: LLMEngine, seq: Sequence) -> torch.Tensor:
    """The final hidden state of every token of seq, whose block table holds all of them."""
    step = SchedulerOutput()
    step.add(seq, seq.num_tokens)
    runner = engine.runner
    batch = prepare_input(step, runner.block_size, runner.device)
    return runner.model(batch.input_ids, batch.positions, runner.attention.plan(batch.attn))
