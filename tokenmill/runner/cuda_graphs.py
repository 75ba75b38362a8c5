"""Decode steps as CUDA graphs: captured once per padded batch size, replayed with no Python and
no host-device synchronization between their kernels.

A decode step of n sequences runs as the graph of the smallest captured size >= n (1, 2, 4, 8,
then every 8 up to max_num_seqs). Its inputs live in static device buffers shared by every size:
the step's own rows are copied in (from tensors already on the device, so no sync), and the
padding rows read token 0 at position 0 and write their K and V into the pool's scratch block
(runner/paged_model.py), which no sequence owns; they attend only to that block. The attention
plan is built inside the graph, so the backend's plan must be device operations alone (the
Triton backend's is). All graphs share one memory pool. The contract is the CPU capture's
(runner/step_graph.py): can_run, then run, which returns the logits and final hidden states of
the step's rows; the model stays plain PyTorch.

How a step is captured is a strategy (`GraphCapture`), so that the padding and filling here are
tested on a machine without a GPU by a capture that reruns the step eagerly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from tokenmill.attention.base import AttentionBackend, AttentionBatch
from tokenmill.runner.batch import ModelInput

logger = logging.getLogger(__name__)

Outputs = tuple[torch.Tensor, torch.Tensor]  # logits, final hidden states


class Replayable(Protocol):
    def replay(self) -> None: ...


class GraphCapture(Protocol):
    def __call__(self, step: Callable[[], Outputs]) -> tuple[Replayable, Outputs]:
        """Captures step; returns the replayable graph and the static tensors its replays write."""
        ...


class CudaGraphCapture:
    """torch.cuda.CUDAGraph, every graph in one memory pool."""

    def __init__(self) -> None:
        self._pool = None

    def __call__(self, step: Callable[[], Outputs]) -> tuple[Replayable, Outputs]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # warm-up off the capture: library handles and workspaces are made here
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = step()
        self._pool = graph.pool()
        return graph, outputs


def batch_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to max_num_seqs (which is always one)."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return sizes + [max_num_seqs]


@dataclass
class _Graph:
    graph: Replayable
    logits: torch.Tensor  # [size, vocab]
    hidden: torch.Tensor  # [size, hidden]


class CudaDecodeGraphs:
    def __init__(self, model: nn.Module, attention: AttentionBackend, max_model_len: int, block_size: int,
                 scratch_block: int, max_num_seqs: int, device: torch.device,
                 capture: GraphCapture | None = None) -> None:  # fmt: skip
        self.model, self.attention, self.block_size = model, attention, block_size
        self.sizes = batch_sizes(max_num_seqs)
        self.max_batch_size = self.sizes[-1]
        self.max_blocks = math.ceil(max_model_len / block_size)
        self.scratch_block = scratch_block
        self.capture = capture if capture is not None else CudaGraphCapture()
        self.graphs: dict[int, _Graph] = {}
        size = self.sizes[-1]
        self._rows = torch.arange(size + 1, dtype=torch.int32, device=device)
        self._inputs = {
            "input_ids": torch.zeros(size, dtype=torch.long, device=device),
            "positions": torch.zeros(size, dtype=torch.long, device=device),
            "slot_blocks": torch.full((size,), scratch_block, dtype=torch.long, device=device),
            "slot_offsets": torch.zeros(size, dtype=torch.long, device=device),
            "query_start": self._rows.clone(),  # one query a row, in every decode step: never refilled
            "seq_lens": torch.ones(size, dtype=torch.int32, device=device),
            "block_tables": torch.full((size, self.max_blocks), scratch_block, dtype=torch.int32, device=device),
        }

    def can_run(self, batch: ModelInput) -> bool:
        """Decode rows only, one a sequence, each sampled, within the largest size and the captured
        width, and none with a LoRA adapter (the delta is PyTorch's on CUDA, with per-step indices)."""
        rows = len(batch.input_ids)
        return (0 < rows <= self.sizes[-1] and len(batch.attn.seq_lens) == rows and batch.lora_slots is None
                and len(batch.logits_indices) == rows and not batch.prompt_rows
                and batch.attn.block_tables.shape[1] <= self.max_blocks)  # fmt: skip

    def run(self, batch: ModelInput) -> Outputs:
        """The step's logits and final hidden states, one row per input row: views of the graph's
        static outputs, overwritten by its next replay."""
        rows = len(batch.input_ids)
        size = next(s for s in self.sizes if s >= rows)
        self._fill(batch, size)
        graph = self.graphs.get(size)
        if graph is None:
            graph = self.graphs[size] = self._capture(size)
        else:
            graph.graph.replay()
        return graph.logits[:rows], graph.hidden[:rows]

    def _capture(self, size: int) -> _Graph:
        start = time.monotonic()
        inputs = {name: buffer[:size] for name, buffer in self._inputs.items()}
        inputs["query_start"] = self._inputs["query_start"][: size + 1]
        batch = AttentionBatch(inputs["slot_blocks"], inputs["slot_offsets"], inputs["query_start"],
                               inputs["seq_lens"], inputs["block_tables"], num_decode=size, block_size=self.block_size)

        def step() -> Outputs:
            hidden = self.model(inputs["input_ids"], inputs["positions"], self.attention.plan(batch))
            return self.model.compute_logits(hidden), hidden

        graph, (logits, hidden) = self.capture(step)
        graph.replay()  # the capture recorded the step; this runs it on the inputs filled for it
        logger.info("captured decode steps of %d sequences in %.3f s", size, time.monotonic() - start)
        return _Graph(graph, logits, hidden)

    def _fill(self, batch: ModelInput, size: int) -> None:
        """The step's rows into the static buffers, and rows..size as padding (device copies only)."""
        rows, attn, buffers = len(batch.input_ids), batch.attn, self._inputs
        buffers["input_ids"][:rows].copy_(batch.input_ids)
        buffers["input_ids"][rows:size].zero_()
        buffers["positions"][:rows].copy_(batch.positions)
        buffers["positions"][rows:size].zero_()
        buffers["slot_blocks"][:rows].copy_(attn.slot_blocks)
        buffers["slot_blocks"][rows:size].fill_(self.scratch_block)
        buffers["slot_offsets"][:rows].copy_(attn.slot_offsets)
        buffers["slot_offsets"][rows:size].zero_()
        buffers["seq_lens"][:rows].copy_(attn.seq_lens)
        buffers["seq_lens"][rows:size].fill_(1)
        width = attn.block_tables.shape[1]
        buffers["block_tables"][:rows, :width].copy_(attn.block_tables)
        buffers["block_tables"][rows:size, 0] = self.scratch_block
