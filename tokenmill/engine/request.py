"""A request as the engine core keeps it: its samples, its metrics, the prompt rows it asked for."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tokenmill.engine.messages import EngineOutput, SampleOutput
from tokenmill.engine.sequence import Sequence
from tokenmill.kv_transfer.params import KVTransferParams
from tokenmill.outputs import RequestMetrics
from tokenmill.sampling_params import SamplingParams


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(arrival_time=time.monotonic()))
    prompt_logprob_chunks: list[torch.Tensor] = field(default_factory=list)
    hidden_chunks: list[torch.Tensor] = field(default_factory=list)
    kv_transfer_params: KVTransferParams | None = None  # its prompt's KV parked for a decode instance

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    def output(self, samples: list[SampleOutput]) -> EngineOutput:
        out = EngineOutput(self.request_id, samples, self.finished, self.metrics, self.seqs[0].num_cached_tokens or 0,
                           kv_transfer_params=self.kv_transfer_params)
        if self.finished and self.hidden_chunks:
            out.prompt_logprobs = torch.cat(self.prompt_logprob_chunks)[: len(self.prompt_token_ids) - 1]
            out.hidden_states = torch.cat(self.hidden_chunks)
        return out
