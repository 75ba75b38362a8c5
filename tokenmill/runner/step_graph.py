"""Decode steps captured once per shape and replayed: the CPU's counterpart of CUDA graphs.

A decode step of the default model makes about 250 kernel calls, and around each the layers'
Python (module calls, views, allocations, argument conversion) costs as much again as a small
kernel's work. So the first decode step of each shape runs the model as usual, on static
input buffers, while tokenmill/kernels/launch.py records every C call it makes with its converted
arguments and the tensors it allocates are kept; later steps of that shape copy their inputs into
the buffers and replay the calls as one C call, with no Python between them. Speculative
decoding's verification rows replay the same way. The model stays plain PyTorch: capture only
watches it run.

A step can be captured only if every operation that computes is a recorded kernel; the model's
own torch calls must be views and allocations, which runner/capture_guard.py checks while
capturing. Where anything else runs (a PyTorch matrix product for shapes the C kernels do not
take, an in-place edit by a hook, a LoRA delta in PyTorch's path), that shape stays eager. LoRA's C
kernel reads each row's adapter slot from a buffer that never moves (lora/layers.py), so steps
with adapters replay too. The embedding lookup runs before the replayed part, and sampling after it.
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

MAX_ROWS = 16  # past this, a step's kernels dwarf its overhead, and matrix products move to BLAS


@dataclass
class _Graph:
    program: Program
    inputs: dict[str, torch.Tensor]  # embeds, positions and the attention batch's tensors
    hidden: torch.Tensor  # the final hidden states, [rows, hidden]
    logits: torch.Tensor  # [rows, vocab]
    memory: list[torch.Tensor]  # every tensor the recorded calls read or write


Shape = tuple[int, int, bool]  # (sequences, rows, whether a row has a LoRA adapter)


class DecodeGraphs:
    """Captures and replays steps over `model` in which every row is sampled or verified: decode
    rows, one a sequence, and speculative decoding's proposals, several. A capture serves every
    step of its shape, (sequences, rows, with adapters), up to MAX_ROWS rows: how the rows fall to the sequences
    is data (the attention kernel reads it from query_start), not part of the recorded calls."""

    max_batch_size = MAX_ROWS

    def __init__(self, model: nn.Module, attention: AttentionBackend, max_model_len: int, block_size: int) -> None:
        self.model, self.attention = model, attention
        self.max_blocks = math.ceil(max_model_len / block_size)  # every table fits the captured width
        self.graphs: dict[Shape, _Graph] = {}
        self.eager_shapes: set[Shape] = set()  # shapes whose step cannot be captured

    def can_run(self, batch: ModelInput) -> bool:
        rows = len(batch.input_ids)
        return (0 < rows <= MAX_ROWS and _shape(batch) not in self.eager_shapes
                and len(batch.logits_indices) == rows and not batch.prompt_rows  # every row is sampled or verified
                and batch.attn.block_tables.shape[1] <= self.max_blocks)  # fmt: skip

    def run(self, batch: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's logits and final hidden states, one row per input row; static buffers,
        overwritten by the next step of the same shape."""
        graph = self.graphs.get(_shape(batch))
        if graph is None:
            return self._capture(batch)
        _fill(graph.inputs, self.model.embed(batch.input_ids), batch)
        graph.program.run()
        return graph.logits, graph.hidden

    def _capture(self, batch: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs the step eagerly on new static buffers, recording it; keeps it if nothing else computed."""
        shape = _shape(batch)
        embeds = self.model.embed(batch.input_ids)
        inputs = _static_inputs(embeds, batch.attn, self.max_blocks)
        _fill(inputs, embeds, batch)
        plan = self.attention.plan(_attention_batch(inputs, batch.attn))
        with Recording() as recording, CaptureGuard() as guard:
            hidden = self.model(None, inputs["positions"], plan, inputs_embeds=inputs["embeds"])
            logits = self.model.compute_logits(hidden)
        if guard.refusal is not None:
            logger.info("steps of %d sequences and %d rows (adapters: %s) stay eager: %s computes outside the "
                        "kernels", *shape, guard.refusal)
            self.eager_shapes.add(shape)
            return logits, hidden
        program = Program(recording.calls)
        self.graphs[shape] = _Graph(program, inputs, hidden, logits, [*inputs.values(), *guard.allocated, logits])
        logger.debug("captured steps of %d sequences and %d rows (adapters: %s): %d kernel calls, replayed %s", *shape,
                     len(program.calls), "in C" if program.in_c else "by ctypes")
        return logits, hidden


def _shape(batch: ModelInput) -> Shape:
    # a step without adapters runs no LoRA calls, so its capture cannot serve a step with them
    return len(batch.attn.seq_lens), len(batch.input_ids), batch.lora_slots is not None


def _static_inputs(embeds: torch.Tensor, attn: AttentionBatch, max_blocks: int) -> dict[str, torch.Tensor]:
    return {
        "embeds": torch.empty_like(embeds),
        "positions": torch.empty(len(embeds), dtype=torch.long),
        "slot_blocks": torch.empty_like(attn.slot_blocks),
        "slot_offsets": torch.empty_like(attn.slot_offsets),
        "query_start": torch.empty_like(attn.query_start),
        "seq_lens": torch.empty_like(attn.seq_lens),
        "block_tables": torch.zeros(len(attn.seq_lens), max_blocks, dtype=torch.int32),
    }


def _fill(inputs: dict[str, torch.Tensor], embeds: torch.Tensor, batch: ModelInput) -> None:
    """Copies a step's inputs into the static buffers. Table entries past a sequence's own blocks
    keep earlier ids, which the kernel never reads (it stops at the sequence's length)."""
    attn = batch.attn
    inputs["embeds"].copy_(embeds)
    inputs["positions"].copy_(batch.positions)
    inputs["slot_blocks"].copy_(attn.slot_blocks)
    inputs["slot_offsets"].copy_(attn.slot_offsets)
    inputs["query_start"].copy_(attn.query_start)
    inputs["seq_lens"].copy_(attn.seq_lens)
    inputs["block_tables"][:, : attn.block_tables.shape[1]].copy_(attn.block_tables)


def _attention_batch(inputs: dict[str, torch.Tensor], attn: AttentionBatch) -> AttentionBatch:
    """The static buffers as the step's attention batch. num_decode is the captured step's; the C
    kernel reads each sequence's queries from query_start and never uses it."""
    return AttentionBatch(inputs["slot_blocks"], inputs["slot_offsets"], inputs["query_start"], inputs["seq_lens"],
                          inputs["block_tables"], num_decode=attn.num_decode, block_size=attn.block_size)
