"""The front end's half of a request: token ids from the engine core in, text out.

Runs where the client is (the server's process, or the offline LLM), never in the core's step
loop. Per step it does work in proportion to the new tokens: each sample's detokenizer decodes a
short window, stop strings are searched only where the new text could complete one, and token
ids and logprobs are appended, never copied. A stop string ends its sample here; the caller
then aborts that sample in the core (take_aborts), which frees its blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tokenmill.engine.detokenizer import IncrementalDetokenizer
from tokenmill.engine.messages import EngineOutput, SampleOutput
from tokenmill.kv_transfer.params import KVTransferParams
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from tokenmill.sampling_params import SamplingParams


@dataclass
class CompletionDelta:
    index: int
    text: str  # new text since the last delta
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass
class RequestDelta:
    request_id: str
    completions: list[CompletionDelta]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int
    kv_transfer_params: KVTransferParams | None = None


@dataclass
class _Sample:
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    num_sent_chars: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class _RequestState:
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[_Sample]
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._requests: dict[str, _RequestState] = {}
        self._aborts: list[tuple[str, list[int]]] = []

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams) -> None:
        samples = [_Sample(IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.stop_strings,
                                                  params.include_stop_str_in_output, params.skip_special_tokens))
                   for _ in range(params.n)]
        self._requests[request_id] = _RequestState(prompt, prompt_token_ids, params, samples)

    def forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def process(self, outputs: list[EngineOutput]) -> list[RequestDelta]:
        """Each core output as the text, tokens and logprobs its request gained. A finished request
        stays until forget() or pop_output()."""
        deltas = []
        for out in outputs:
            state = self._requests.get(out.request_id)
            if state is None or state.finished:
                continue  # aborted here, or ended by a stop string while more was in flight
            state.metrics, state.num_cached_tokens = out.metrics, out.num_cached_tokens
            completions = [c for s in out.samples if (c := self._fold(out.request_id, state, s)) is not None]
            if not completions:
                continue  # only tokens of samples already ended here
            if state.finished and state.metrics.finished_time is None:  # ended here, by a stop string
                state.metrics.finished_time = time.monotonic()
            deltas.append(RequestDelta(out.request_id, completions, state.finished, state.metrics,
                                       state.num_cached_tokens, out.kv_transfer_params))
        return deltas

    def _fold(self, request_id: str, state: _RequestState, out: SampleOutput) -> CompletionDelta | None:
        sample = state.samples[out.index]
        if sample.finish_reason is not None:
            return None
        num_tokens = len(sample.token_ids)
        # A token that ended the sample in the core (EOS, a stop token id) keeps out of the text.
        last_shown = len(out.new_token_ids) - (1 if out.finish_reason == "stop" else 0)
        for i, token_id in enumerate(out.new_token_ids):
            sample.token_ids.append(token_id)
            if out.new_logprobs is not None and i < len(out.new_logprobs):
                sample.logprobs.append(self._decoded(out.new_logprobs[i]))
            stop = sample.detokenizer.add_token(token_id) if i < last_shown else None
            if stop is not None:
                sample.finish_reason, sample.stop_reason = "stop", stop
                if out.finish_reason is None:
                    self._aborts.append((request_id, [out.index]))
                break
        else:
            sample.finish_reason, sample.stop_reason = out.finish_reason, out.stop_reason
        return self._delta(state, out.index, num_tokens)

    def _delta(self, state: _RequestState, index: int, num_tokens_before: int) -> CompletionDelta:
        sample = state.samples[index]
        detok = sample.detokenizer
        # While running, hold back a tail that may yet become a stop string: streamed text is final.
        end = len(detok.output_text) if sample.finish_reason is not None else detok.num_streamable_chars
        text, sample.num_sent_chars = detok.output_text[sample.num_sent_chars : end], max(end, sample.num_sent_chars)
        logprobs = sample.logprobs[num_tokens_before:] if state.params.logprobs is not None else None
        return CompletionDelta(index, text, sample.token_ids[num_tokens_before:], logprobs, sample.finish_reason,
                               sample.stop_reason)

    def _decoded(self, logprobs: dict[int, Logprob]) -> dict[int, Logprob]:
        for token_id, logprob in logprobs.items():
            logprob.decoded_token = self.tokenizer.id_to_token(token_id)
        return logprobs

    def take_aborts(self) -> list[tuple[str, list[int]]]:
        """(request id, sample indices) that stop strings ended here, for the core to abort."""
        aborts, self._aborts = self._aborts, []
        return aborts

    def output(self, request_id: str) -> RequestOutput:
        """The request so far, in vLLM's RequestOutput shape (text held back as when streaming)."""
        state = self._requests[request_id]
        completions = [
            CompletionOutput(
                index=i, text=s.detokenizer.output_text[: s.num_sent_chars], token_ids=list(s.token_ids),
                logprobs=list(s.logprobs) if state.params.logprobs is not None else None,
                finish_reason=s.finish_reason, stop_reason=s.stop_reason,
            )
            for i, s in enumerate(state.samples)
        ]  # fmt: skip
        return RequestOutput(request_id, state.prompt, state.prompt_token_ids, completions, state.finished,
                             state.metrics, state.num_cached_tokens)

    def pop_output(self, request_id: str) -> RequestOutput:
        out = self.output(request_id)
        self.forget(request_id)
        return out
