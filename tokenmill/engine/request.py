"""Request: a prompt, its n sequences, their detokenizers, and the rules that finish them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tokenmill.engine.detokenizer import IncrementalDetokenizer
from tokenmill.engine.sequence import Sequence
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from tokenmill.sampling_params import SamplingParams


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]
    detokenizers: list[IncrementalDetokenizer]
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(arrival_time=time.monotonic()))

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[self._completion(seq, detok) for seq, detok in zip(self.seqs, self.detokenizers)],
            finished=self.finished,
            metrics=self.metrics,
            num_cached_tokens=self.seqs[0].num_cached_tokens or 0,
        )

    @staticmethod
    def _completion(seq: Sequence, detok: IncrementalDetokenizer) -> CompletionOutput:
        # While running, hold back a tail that may yet become a stop string: streamed text is final.
        text = detok.output_text if seq.is_finished else detok.output_text[: detok.num_streamable_chars]
        return CompletionOutput(
            index=seq.index,
            text=text,
            token_ids=seq.output_token_ids,
            logprobs=seq.logprobs if seq.params.logprobs is not None else None,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
        )


def append_token(
    seq: Sequence, detok: IncrementalDetokenizer, token_id: int, logprobs: dict[int, Logprob] | None,
    tokenizer: Tokenizer, eos_token_id: int | None, max_model_len: int,
) -> tuple[str, int | str | None] | None:
    """Adds a sampled token; returns (finish_reason, stop_reason) when it ends the sequence."""
    seq.append_token(token_id)
    if logprobs is not None:
        for tid, lp in logprobs.items():
            lp.decoded_token = tokenizer.id_to_token(tid)
        seq.logprobs.append(logprobs)
    params = seq.params
    if seq.num_output_tokens > params.min_tokens:  # the sampler kept stop tokens out below min_tokens
        if token_id in (params.stop_token_ids or ()):
            return "stop", token_id
        if token_id == eos_token_id and not params.ignore_eos:
            return "stop", None
    stop_string = detok.add_token(token_id)
    if stop_string is not None:
        return "stop", stop_string
    if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
        return "length", None
    if seq.num_tokens >= max_model_len:
        return "length", None
    return None
