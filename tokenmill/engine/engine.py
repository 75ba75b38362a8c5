"""LLMEngine: the engine core's step loop over token ids. scheduler → model runner → sampler;
text (detokenization, stop strings) is the front end's (engine/output_processor.py)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Sequence as Seq

import torch

from tokenmill.config import EngineConfig, SchedulerConfig
from tokenmill.engine.messages import EngineOutput, RunnerOutput, SampleOutput, SchedulerOutput
from tokenmill.engine.request import Request
from tokenmill.engine.scheduler import Scheduler, shared_prefix_len
from tokenmill.engine.sequence import Sequence, SequenceStatus
from tokenmill.engine.stats import EngineStats, RankStats
from tokenmill.engine.stop import check_stop
from tokenmill.kv.kv_manager import KVCacheManager
from tokenmill.kv_transfer.connector import DistributedKVConnector
from tokenmill.kv_transfer.engine_side import KVTransfer
from tokenmill.lora.adapter import AdapterError
from tokenmill.lora.request import LoRARequest
from tokenmill.distributed.executor import make_executor
from tokenmill.runner.model_runner import ModelRunner
from tokenmill.sampling_params import SamplingParams
from tokenmill.structured.manager import StructuredOutputManager

logger = logging.getLogger(__name__)

STREAMING_CONTEXT = 2**31 - 1  # a streaming model's context limit: none, in practice
_GRAMMAR_WAIT_S = 0.005  # with nothing to run but grammars compiling, how long a step waits for one
_RANK_STATS_MAX_AGE_S = 1.0  # how stale stats() may report the ranks' counters (asking costs a round trip)


class InvalidRequestError(ValueError):
    """A request the engine refuses; `param` names the offending field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class RequestFailedError(RuntimeError):
    """The engine failed one request in that request's own work of a step (its grammar, its stop
    rules, its KV hand-off); the batch's other requests go on. Nothing in the request was wrong."""

    param = None


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.executor = make_executor(config)  # the runner here, and on every other rank if there are several
        self.runner = self.executor.runner  # rank 0's: what the engine reads of the runner's state
        self.tokenizer = self.executor.loaded.tokenizer
        self.arch = self.executor.loaded.arch
        layout = self.runner.kv_layout
        _check_kv_groups(config, layout.num_groups)
        self.kv_manager = KVCacheManager(self.runner.num_blocks, config.cache.block_size,
                                         config.cache.enable_prefix_caching, group_windows=layout.group_windows,
                                         sink_tokens=self.arch.attention_sinks)  # fmt: skip
        self.max_model_len = self._max_model_len(config.model.max_model_len, config.scheduler)
        self.kv_transfer = _kv_transfer(config, self.runner, self.kv_manager)  # disaggregated serving, or None
        self.scheduler = Scheduler(config.scheduler, self.kv_manager, self.executor.pipeline_depth,
                                   None if self.kv_transfer is None else self.kv_transfer.pull_prompt)  # fmt: skip
        self.structured = StructuredOutputManager(self.tokenizer, self.arch.vocab_size)
        spec = config.speculative
        if spec is not None:
            self.executor.call("enable_speculation", spec, self.max_model_len)
        if not config.model.enforce_eager:
            self.executor.call("enable_decode_graphs", self.max_model_len + config.scheduler.num_lookahead_tokens,
                               config.scheduler.max_num_seqs)
        self.speculative_method = None if spec is None else spec.method
        self._num_draft_tokens = self._num_accepted_tokens = 0
        self.requests: dict[str, Request] = {}
        self._seqs: dict[int, Sequence] = {}
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()
        # refused (or failed) after add_request returned
        self._rejected: list[tuple[str, InvalidRequestError | RequestFailedError]] = []
        self._steps_in_flight = 0  # submitted to the executor, output not yet taken
        self._rank_stats: tuple[RankStats, ...] = ()
        self._rank_stats_time = -math.inf

    def _max_model_len(self, requested: int | None, scheduler: SchedulerConfig) -> int:
        """The context limit: the model's, capped so that one sequence (and the slots its draft
        writes ahead) always fits in the pool, as it holds blocks under its windows."""
        # Streaming, no query is placed farther from a key than the sinks and the window reach.
        model_limit = STREAMING_CONTEXT if self.arch.unbounded_context else self.arch.max_position_embeddings
        capacity = self.kv_manager.sequence_capacity(scheduler.max_num_batched_tokens)
        kv_tokens = model_limit if capacity is None else capacity - scheduler.num_lookahead_tokens
        if requested is not None and requested > min(model_limit, kv_tokens):
            where = "the model's context length" if requested > model_limit else "the KV cache's capacity"
            raise ValueError(f"max_model_len {requested} exceeds {where} ({min(model_limit, kv_tokens)} tokens)")
        limit = requested or min(model_limit, kv_tokens)
        logger.info("max_model_len = %d (model %d, KV cache %d tokens)", limit, model_limit, kv_tokens)
        return limit

    # ---- requests in -------------------------------------------------------------------------

    def add_request(
        self, prompt_token_ids: Seq[int], params: SamplingParams, request_id: str | None = None, priority: int = 0,
        cache_salt: str | None = None, returns_prompt_rows: bool = False, lora_request: LoRARequest | None = None,
    ) -> str:
        """returns_prompt_rows: the finished output carries the prompt's next-token log-probabilities
        and final hidden states (computed in full: no prefix-cache hits). lora_request: the adapter
        the request runs with (the engine needs enable_lora)."""
        request_id = request_id if request_id is not None else str(next(self._request_ids))
        if request_id in self.requests:
            raise InvalidRequestError("request_id", f"request id {request_id!r} is already in use")
        if returns_prompt_rows and params.n > 1:
            raise InvalidRequestError("n", "a request for prompt rows has one sample (n = 1)")
        token_ids = self._checked(prompt_token_ids, returns_prompt_rows)
        bad_bias = [t for t in params.logit_bias or {} if not 0 <= t < self.arch.vocab_size]
        if bad_bias:
            raise InvalidRequestError("logit_bias", f"logit_bias token id {bad_bias[0]} is outside the vocabulary "
                                                    f"(0..{self.arch.vocab_size - 1})")
        if lora_request is not None:
            self._check_adapter(lora_request)
        # Stop ids outside the vocabulary are never sampled, so they can never stop it: dropped, so
        # that the sampler masks only real ids.
        kept = [t for t in params.stop_token_ids or () if 0 <= t < self.arch.vocab_size]
        if params.stop_token_ids and len(kept) < len(params.stop_token_ids):
            params = dataclasses.replace(params, stop_token_ids=kept)
        seqs = self._make_sequences(request_id, token_ids, params, priority, cache_salt, returns_prompt_rows,
                                    lora_request)
        self.requests[request_id] = Request(request_id, token_ids, params, seqs)
        for seq in seqs:
            self._seqs[seq.seq_id] = seq
            if params.structured_outputs is not None:  # scheduled once its grammar is compiled
                seq.status = SequenceStatus.WAITING_FOR_GRAMMAR
                self.structured.add(seq.seq_id, params.structured_outputs)
            else:
                self.scheduler.add(seq)
        return request_id

    def _checked(self, prompt_token_ids: Seq[int], fills_context: bool = False) -> list[int]:
        """fills_context: the prompt may take the whole context (scoring writes no KV past it)."""
        token_ids = [int(t) for t in prompt_token_ids]
        if not token_ids:
            raise InvalidRequestError("prompt", "prompt is empty")
        bad = [t for t in token_ids if not 0 <= t < self.arch.vocab_size]
        if bad:
            raise InvalidRequestError("prompt", f"token id {bad[0]} is outside the vocabulary "
                                                f"(0..{self.arch.vocab_size - 1})")
        if len(token_ids) > self.max_model_len - (0 if fills_context else 1):
            raise InvalidRequestError("prompt", f"prompt has {len(token_ids)} tokens; the context holds "
                                                f"{self.max_model_len}, leaving no room to generate")
        return token_ids

    def _check_adapter(self, lora_request: LoRARequest) -> None:
        if self.runner.lora is None:
            raise InvalidRequestError("lora_request", "this engine serves no adapters: start it with enable_lora")
        try:
            self.runner.lora.check(lora_request)
        except (AdapterError, OSError) as exc:
            raise InvalidRequestError("lora_request", f"adapter {lora_request.lora_name!r}: {exc}") from exc

    def _make_sequences(
        self, request_id: str, token_ids: list[int], params: SamplingParams, priority: int, cache_salt: str | None,
        returns_prompt_rows: bool, lora_request: LoRARequest | None,
    ) -> list[Sequence]:
        seqs: list[Sequence] = []
        shares_prefix = shared_prefix_len(len(token_ids), self.kv_manager.block_size) > 0
        for index in range(params.n):
            # Each sample its own stream, from any integer the API takes.
            seed = None if params.seed is None else (params.seed + index * 1_000_003) % 2**63
            source = seqs[0] if index > 0 and shares_prefix else None
            seqs.append(Sequence(next(self._seq_ids), request_id, index, token_ids, params, priority, seed, source,
                                 cache_salt, returns_prompt_rows, lora_request))
        return seqs

    def abort_request(self, request_id: str, indices: Seq[int] | None = None) -> None:
        """Ends the request's samples (the given ones, or all) and frees their blocks."""
        request = self.requests.get(request_id)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished and (indices is None or seq.index in indices):
                self.scheduler.finish(seq, "abort")
        if request.finished:
            self._forget(request)

    def _forget(self, request: Request) -> None:
        del self.requests[request.request_id]
        for seq in request.seqs:
            del self._seqs[seq.seq_id]
            self.structured.free(seq.seq_id)

    def take_rejected(self) -> list[tuple[str, InvalidRequestError | RequestFailedError]]:
        """Requests ended since the last call after add_request had taken them, and why: refused (an
        output constraint the grammar backend could not compile), or failed in a step (an error in
        their own work). They hold nothing any more and get no further output."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def _admit_compiled(self) -> None:
        """Sequences whose grammar is compiled join the scheduler; a request whose grammar failed is refused."""
        ready, failed = self.structured.take_ready()
        for seq_id in ready:
            seq = self._seqs.get(seq_id)
            if seq is not None and seq.status is SequenceStatus.WAITING_FOR_GRAMMAR:
                self.scheduler.add(seq)
        for seq_id, exc in failed.items():
            seq = self._seqs.get(seq_id)
            if seq is not None:  # else a sibling sample's failure already refused the request
                self._end(self.requests[seq.request_id], InvalidRequestError(exc.param, str(exc)))

    def _end(self, request: Request, error: InvalidRequestError | RequestFailedError) -> None:
        """Ends every sample of the request, frees its blocks, and reports why."""
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
        self._forget(request)
        self._rejected.append((request.request_id, error))

    # ---- the step ----------------------------------------------------------------------------

    def has_unfinished_requests(self) -> bool:
        """Requests in flight, a step whose output is still to be taken (its requests aborted meanwhile),
        or blocks parked for a decode instance to pull."""
        parked = self.kv_transfer is not None and self.kv_transfer.has_parked
        return bool(self.requests) or self._steps_in_flight > 0 or parked

    def step(self) -> list[EngineOutput]:
        """Runs one batched forward pass; returns what each request gained, if anything. With
        pipeline parallelism it first fills the pipeline (up to one step per stage in flight, each
        of sequences not in the others), then takes the oldest step's output."""
        if self.structured.compiling:
            self._admit_compiled()
        if self.kv_transfer is not None:
            self.kv_transfer.free_released()
        while self._steps_in_flight < self.executor.pipeline_depth and self._submit_next():
            self._steps_in_flight += 1
        if not self._steps_in_flight:
            if self.structured.compiling:
                self.structured.wait(_GRAMMAR_WAIT_S)
            elif self.kv_transfer is not None and self.kv_transfer.has_parked:
                self.kv_transfer.wait()
            return []
        result = self.executor.take_output()
        self._steps_in_flight -= 1
        self.scheduler.update(result)
        self._num_draft_tokens += result.spec_counts.num_draft_tokens
        self._num_accepted_tokens += result.spec_counts.num_accepted_tokens
        self._keep_prompt_rows(result)
        return self._process(result)

    def _submit_next(self) -> bool:
        """Schedules a step and hands it to the executor; False if nothing could be scheduled."""
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return False
        self._mark_scheduled(sched)
        if self.structured.active:
            sched = dataclasses.replace(sched, grammar_bitmask=self.structured.bitmask(self._sampling_seq_ids(sched)))
        self.executor.submit(sched)
        return True

    def _mark_scheduled(self, sched: SchedulerOutput) -> None:
        now = time.monotonic()
        for seq_id in sched.num_scheduled_tokens:
            metrics = self.requests[self._seqs[seq_id].request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
        for seq_id in sched.preempted_seq_ids:
            if seq_id not in self._seqs:
                continue  # ended since (the step that preempted it carried nothing to a runner)
            request = self.requests[self._seqs[seq_id].request_id]
            request.metrics.num_preemptions += 1
            request.prompt_logprob_chunks.clear()  # its prompt is computed again from the start
            request.hidden_chunks.clear()

    def _sampling_seq_ids(self, sched: SchedulerOutput) -> list[int]:
        """The scheduled sequences that this step catches up, so that it samples their next token."""
        return [seq_id for seq_id, n in sched.num_scheduled_tokens.items()
                if self._seqs[seq_id].num_computed_tokens + n
                == self._seqs[seq_id].num_tokens + len(sched.spec_token_ids.get(seq_id, ()))]  # fmt: skip

    def _keep_prompt_rows(self, result: RunnerOutput) -> None:
        for seq_id, logprobs in result.prompt_logprobs.items():
            if seq_id not in self._seqs:
                continue  # aborted while its step was in flight
            request = self.requests[self._seqs[seq_id].request_id]
            request.prompt_logprob_chunks.append(logprobs)
            request.hidden_chunks.append(result.hidden_states[seq_id])

    def _process(self, result: RunnerOutput) -> list[EngineOutput]:
        now = time.monotonic()
        touched: dict[str, list[SampleOutput]] = {}
        for seq_id, token_ids in result.sampled_token_ids.items():
            seq = self._seqs.get(seq_id)
            if seq is None or seq.is_finished:
                continue  # aborted while its step was in flight (or a sibling sample failed)
            try:
                sample = self._append(seq, token_ids, result.logprobs.get(seq_id))
            except Exception:  # its own work failed: that request ends, the batch goes on
                logger.exception("request %s failed in a step", seq.request_id)
                self._end(self.requests[seq.request_id], RequestFailedError("the engine failed this request; "
                                                                            "the server's log has the details"))
                continue
            touched.setdefault(seq.request_id, []).append(sample)
        outputs = []
        for request_id, samples in touched.items():
            request = self.requests.get(request_id)
            if request is None:
                continue  # failed after a sibling sample's tokens were added
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            if request.finished:
                request.metrics.finished_time = now
                self._forget(request)
            outputs.append(request.output(samples))
        return outputs

    def _append(self, seq: Sequence, token_ids: list[int], logprobs: dict | None) -> SampleOutput:
        """Adds the step's tokens to seq, up to the first that ends it (several when proposals were accepted)."""
        added: list[int] = []
        for token_id in token_ids:
            seq.append_token(token_id)
            self.structured.accept(seq.seq_id, token_id)
            added.append(token_id)
            finish = check_stop(seq, token_id, self.tokenizer.eos_token_ids, self.max_model_len)
            if finish is not None:
                parks = self.kv_transfer is not None and self.kv_transfer.parks(seq)
                self.scheduler.finish(seq, *finish, keep_blocks=parks)
                if parks:
                    try:
                        self.requests[seq.request_id].kv_transfer_params = self.kv_transfer.park(seq)
                    except Exception:
                        self.kv_manager.free(seq.seq_id)  # kept for a hand-off that never happened
                        raise
                break
        new_logprobs = None if seq.params.logprobs is None else [logprobs] if logprobs is not None else []
        return SampleOutput(seq.index, added, new_logprobs, seq.finish_reason, seq.stop_reason)

    # ---- before the first request ------------------------------------------------------------

    def warm_up(self) -> float:
        """Runs, before any request, each step whose first run costs more than the rest: a full
        prefill chunk (the allocator's pages, oneDNN's primitives and prepacked weights) and a decode
        step at every batch size that is captured (runner/step_graph.py), so that a server's first
        requests run like its later ones. Leaves the engine idle with its counters at zero; returns
        the seconds it took. The grammar backend's tokenizer trie starts building meanwhile, in its thread."""
        start = time.monotonic()
        self.structured.prepare()
        salt = "tokenmill-warm-up"  # its blocks are never a prefix of a real request's
        # One long prompt, then a ladder: sequence i of n decodes i steps, so the decode steps
        # take n, n - 1, ..., 1 sequences.
        long_prompt = [(7 * t) % self.arch.vocab_size for t in range(min(self.scheduler.config.max_num_batched_tokens,
                                                                        self.max_model_len - 1))]
        ladder = min(self.runner.max_captured_batch_size, self.scheduler.config.max_num_seqs)
        phases = [[(long_prompt, 2)], [([100 + i, 200 + i], i + 1) for i in range(1, ladder + 1)]]
        for phase in phases:
            for token_ids, max_tokens in phase:
                params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
                self.add_request(token_ids, params, cache_salt=salt)
            while self.has_unfinished_requests():
                self.step()
        self.kv_manager.reset_counts()
        self._num_draft_tokens = self._num_accepted_tokens = self.scheduler.num_preemptions = 0
        seconds = time.monotonic() - start
        logger.info("warmed up in %.2f s: a %d-token prefill and decode steps of 1-%d sequences", seconds,
                    len(long_prompt), ladder)
        return seconds

    def check_workers(self) -> None:
        """Raises WorkerDiedError if a worker process has exited, even while no step runs."""
        self.executor.check_workers()

    def shutdown(self) -> None:
        """Stops the other ranks' workers, if any (idempotent)."""
        self.executor.shutdown()

    # ---- for tools ---------------------------------------------------------------------------

    def stats(self, ranks_max_age_s: float = _RANK_STATS_MAX_AGE_S) -> EngineStats:
        """The engine's counters; the ranks' as they were at most ranks_max_age_s ago."""
        if time.monotonic() - self._rank_stats_time >= ranks_max_age_s:
            self._rank_stats, self._rank_stats_time = tuple(self.executor.rank_stats()), time.monotonic()
        scheduler, kv, cache, lora = self.scheduler, self.kv_manager, self.kv_manager.prefix_cache, self.runner.lora
        transfer = self.kv_transfer
        return EngineStats(
            num_running=len(scheduler.running), num_waiting=len(scheduler.waiting), kv_cache_usage=kv.usage,
            num_preemptions=scheduler.num_preemptions,
            prefix_cache_queries=cache.num_queried_tokens if cache is not None else 0,
            prefix_cache_hits=cache.num_hit_tokens if cache is not None else 0,
            speculative_method=self.speculative_method, spec_draft_tokens=self._num_draft_tokens,
            spec_accepted_tokens=self._num_accepted_tokens, num_blocks=kv.num_blocks,
            num_free_blocks=kv.num_free_blocks, grammar_compile_seconds=self.structured.compile_seconds,
            grammar_mask_seconds=self.structured.mask_seconds + self.runner.sampler.grammar_mask_seconds,
            grammar_masked_steps=self.structured.masked_steps,
            lora_loads=lora.num_loads if lora is not None else 0, lora_swaps=lora.num_swaps if lora is not None else 0,
            running_adapters=_adapter_names(scheduler.running) if lora is not None else (),
            waiting_adapters=_adapter_names(scheduler.waiting) if lora is not None else (),
            kv_transfers_pulled=transfer.num_pulled if transfer is not None else 0,
            kv_transfer_fallbacks=transfer.num_fallbacks if transfer is not None else 0,
            ranks=self._rank_stats,
        )

    @torch.inference_mode()
    def score_prompt(self, token_ids: Seq[int], lora_request: LoRARequest | None = None) -> EngineOutput:
        """Runs token_ids as a prompt alone (through an adapter, if given) and returns its
        prompt_logprobs and hidden_states (evaluation, draft-head training). The engine must have
        no other request in flight."""
        if self.requests:
            raise RuntimeError("score_prompt runs on an idle engine; requests are in flight")
        request_id = self.add_request(token_ids, SamplingParams(max_tokens=1, ignore_eos=True),
                                      returns_prompt_rows=True, lora_request=lora_request)
        try:
            while True:
                for out in self.step():
                    if out.request_id == request_id and out.finished:
                        return out
        except BaseException:  # an interrupt, or an error in a step: give its blocks back
            self.abort_request(request_id)
            raise


def _check_kv_groups(config: EngineConfig, num_groups: int) -> None:
    """Several KV groups (a sliding-window model's freeing, kv/layout.py), or tables with holes
    (streaming), reach the model runner's own steps only: draft models, parked KV and pipeline
    stages address one whole table per sequence."""
    uses = {"speculative decoding": config.speculative is not None,
            "disaggregated prefill (--kv-role)": config.kv_transfer.kv_role is not None,
            "pipeline parallelism": config.parallel.pipeline_parallel_size > 1}  # fmt: skip
    unsupported = [name for name, used in uses.items() if used]
    if unsupported and config.model.sliding_window is not None:
        raise ValueError(f"{unsupported[0]} does not work with streaming (--sliding-window) yet")
    if unsupported and num_groups > 1:
        raise ValueError(f"{unsupported[0]} does not work with a sliding-window model's hybrid KV cache yet; "
                         "add --disable-hybrid-kv-cache-manager (the windows are masked, nothing freed)")


def _kv_transfer(config: EngineConfig, runner: ModelRunner, kv: KVCacheManager) -> KVTransfer | None:
    role = config.kv_transfer.kv_role
    if role is None:
        return None
    connector = DistributedKVConnector(config.kv_transfer, runner.paged.kv_cache, runner.paged.kv_scales)
    return KVTransfer(role, connector, kv)


def _adapter_names(seqs: Seq[Sequence]) -> tuple[str, ...]:
    return tuple(sorted({s.lora_request.lora_name for s in seqs if s.lora_request is not None}))
