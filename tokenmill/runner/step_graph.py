"""Decode steps captured once per batch size and replayed: the CPU's counterpart of CUDA graphs.

A decode step of the default model makes about 250 kernel calls, and around each the layers'
Python (module calls, views, allocations, argument conversion) costs as much again as a small
kernel's work. So the first decode step of each batch size runs the model as usual, on static
input buffers, while tokenmill/kernels/launch.py records every C call it makes with its converted
arguments and the tensors it allocates are kept; later steps of that size copy their inputs into
the buffers and replay the calls as one C call, with no Python between them. The model stays plain PyTorch:
capture only watches it run.

A step can be captured only if every operation that computes is a recorded kernel; the model's
own torch calls must be views and allocations, which runner/capture_guard.py checks while
capturing. Where anything else runs (a PyTorch matrix product for shapes the C kernels do not
take, an in-place edit by a hook, a LoRA delta written in torch), that batch size stays eager. The embedding lookup
runs before the replayed part, and sampling after it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from tokenmill.attention.base import AttentionBackend, AttentionBatch
from tokenmill.kernels.launch import Program, Recording
from tokenmill.runner.batch import ModelInput
from tokenmill.runner.capture_guard import CaptureGuard

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 16  # past this, a step's kernels dwarf its overhead, and matrix products move to BLAS


@dataclass
class _Graph:
    program: Program
    inputs: dict[str, torch.Tensor]  # embeds, positions and the attention batch's tensors
    logits: torch.Tensor
    memory: list[torch.Tensor]  # every tensor the recorded calls read or write


class DecodeGraphs:
    """Captures and replays decode-only steps of 1..MAX_BATCH_SIZE sequences over `model`."""

    def __init__(self, model: nn.Module, attention: AttentionBackend, max_model_len: int, block_size: int) -> None:
        self.model, self.attention = model, attention
        self.max_blocks = math.ceil(max_model_len / block_size)  # every table fits the captured width
        self.graphs: dict[int, _Graph] = {}
        self.eager_sizes: set[int] = set()  # batch sizes whose step cannot be captured

    def can_run(self, batch: ModelInput) -> bool:
        size = len(batch.sampled_seqs)
        return (0 < size <= MAX_BATCH_SIZE and size not in self.eager_sizes and batch.attn.num_decode == size
                and len(batch.input_ids) == size and not batch.prompt_rows
                and batch.attn.block_tables.shape[1] <= self.max_blocks)  # fmt: skip

    def logits(self, batch: ModelInput) -> torch.Tensor:
        """The step's logits, [batch, vocab]; a static buffer, overwritten by the next step of its size."""
        graph = self.graphs.get(len(batch.input_ids))
        if graph is None:
            return self._capture(batch)
        _fill(graph.inputs, self.model.embed(batch.input_ids), batch)
        graph.program.run()
        return graph.logits

    def _capture(self, batch: ModelInput) -> torch.Tensor:
        """Runs the step eagerly on new static buffers, recording it; keeps it if nothing else computed."""
        size = len(batch.input_ids)
        embeds = self.model.embed(batch.input_ids)
        inputs = _static_inputs(embeds, batch.attn, self.max_blocks)
        _fill(inputs, embeds, batch)
        plan = self.attention.plan(_attention_batch(inputs, batch.attn.block_size))
        with Recording() as recording, CaptureGuard() as guard:
            hidden = self.model(None, inputs["positions"], plan, inputs_embeds=inputs["embeds"])
            logits = self.model.compute_logits(hidden)
        if guard.refusal is not None:
            logger.info("decode steps of %d sequences stay eager: %s computes outside the kernels", size,
                        guard.refusal)
            self.eager_sizes.add(size)
            return logits
        program = Program(recording.calls)
        self.graphs[size] = _Graph(program, inputs, logits, [*inputs.values(), *guard.allocated, logits])
        logger.info("captured decode steps of %d sequences: %d kernel calls, replayed %s", size,
                    len(program.calls), "in C" if program.in_c else "by ctypes")
        return logits


def _static_inputs(embeds: torch.Tensor, attn: AttentionBatch, max_blocks: int) -> dict[str, torch.Tensor]:
    size = len(embeds)
    return {
        "embeds": torch.empty_like(embeds),
        "positions": torch.empty(size, dtype=torch.long),
        "slot_blocks": torch.empty_like(attn.slot_blocks),
        "slot_offsets": torch.empty_like(attn.slot_offsets),
        "query_start": torch.arange(size + 1, dtype=torch.int32),  # one query a sequence
        "seq_lens": torch.empty_like(attn.seq_lens),
        "block_tables": torch.zeros(size, max_blocks, dtype=torch.int32),
    }


def _fill(inputs: dict[str, torch.Tensor], embeds: torch.Tensor, batch: ModelInput) -> None:
    """Copies a step's inputs into the static buffers. Table entries past a sequence's own blocks
    keep earlier ids, which the kernel never reads (it stops at the sequence's length)."""
    attn = batch.attn
    inputs["embeds"].copy_(embeds)
    inputs["positions"].copy_(batch.positions)
    inputs["slot_blocks"].copy_(attn.slot_blocks)
    inputs["slot_offsets"].copy_(attn.slot_offsets)
    inputs["seq_lens"].copy_(attn.seq_lens)
    inputs["block_tables"][:, : attn.block_tables.shape[1]].copy_(attn.block_tables)


def _attention_batch(inputs: dict[str, torch.Tensor], block_size: int) -> AttentionBatch:
    return AttentionBatch(inputs["slot_blocks"], inputs["slot_offsets"], inputs["query_start"], inputs["seq_lens"],
                          inputs["block_tables"], num_decode=len(inputs["seq_lens"]), block_size=block_size)
