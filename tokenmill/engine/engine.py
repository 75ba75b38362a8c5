"""LLMEngine: the step loop. request → scheduler → model runner → sampler → detokenizer → output."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence as Seq

import torch

from tokenmill.config import EngineConfig
from tokenmill.engine.detokenizer import IncrementalDetokenizer
from tokenmill.engine.request import Request, append_token
from tokenmill.engine.scheduler import Scheduler, SchedulerOutput, shared_prefix_len
from tokenmill.engine.sequence import Sequence
from tokenmill.kv.block_manager import BlockManager
from tokenmill.kv.prefix_cache import PrefixCache
from tokenmill.model.loader import load_model
from tokenmill.outputs import RequestOutput
from tokenmill.runner.model_runner import ModelRunner, RunnerOutput
from tokenmill.sampling_params import SamplingParams
from tokenmill.speculative.speculator import Speculator, make_proposer

logger = logging.getLogger(__name__)


class InvalidRequestError(ValueError):
    """A request the engine refuses; `param` names the offending field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        loaded = load_model(config.model)
        self.tokenizer = loaded.tokenizer
        self.arch = loaded.arch
        spec = config.speculative
        self.runner = ModelRunner(loaded, config.model, config.cache,
                                  keep_hidden=spec is not None and spec.uses_heads)
        prefix_cache = PrefixCache() if config.cache.enable_prefix_caching else None
        self.block_manager = BlockManager(self.runner.num_blocks, config.cache.block_size, prefix_cache)
        self.max_model_len = self._max_model_len(config.model.max_model_len)
        self.scheduler = Scheduler(config.scheduler, self.block_manager)
        self.speculator = None if spec is None else Speculator(
            spec, self.max_model_len, make_proposer(spec, self.runner, self.block_manager, config.model))
        self.device = config.model.device
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self._request_ids = itertools.count()

    def _max_model_len(self, requested: int | None) -> int:
        """The context limit: the model's, capped so that one sequence always fits in the pool."""
        kv_tokens = self.block_manager.num_blocks * self.block_manager.block_size
        model_limit = self.arch.max_position_embeddings
        if requested is not None and requested > min(model_limit, kv_tokens):
            where = "the model's context length" if requested > model_limit else "the KV cache's capacity"
            raise ValueError(f"max_model_len {requested} exceeds {where} ({min(model_limit, kv_tokens)} tokens)")
        limit = requested or min(model_limit, kv_tokens)
        logger.info("max_model_len = %d (model %d, KV cache %d tokens)", limit, model_limit, kv_tokens)
        return limit

    # ---- requests in -------------------------------------------------------------------------

    def add_request(
        self, prompt: str | Seq[int], params: SamplingParams, request_id: str | None = None, priority: int = 0,
        cache_salt: str | None = None,
    ) -> str:
        request_id = request_id if request_id is not None else str(next(self._request_ids))
        if request_id in self.requests:
            raise InvalidRequestError("request_id", f"request id {request_id!r} is already in use")
        text, token_ids = self._tokenize(prompt)
        self._check_length(len(token_ids))
        seqs = self._make_sequences(request_id, token_ids, params, priority, cache_salt)
        detoks = [
            IncrementalDetokenizer(self.tokenizer, token_ids, params.stop_strings, params.include_stop_str_in_output,
                                   params.skip_special_tokens)
            for _ in seqs
        ]
        self.requests[request_id] = Request(request_id, text, token_ids, params, seqs, detoks)
        for seq in seqs:
            self.scheduler.add(seq)
        return request_id

    def _tokenize(self, prompt: str | Seq[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt", "prompt is empty")
            return prompt, self.tokenizer.encode(prompt)
        token_ids = [int(t) for t in prompt]
        if not token_ids:
            raise InvalidRequestError("prompt", "prompt is empty")
        bad = [t for t in token_ids if not 0 <= t < self.arch.vocab_size]
        if bad:
            raise InvalidRequestError("prompt", f"token id {bad[0]} is outside the vocabulary (0..{self.arch.vocab_size - 1})")
        return None, token_ids

    def _check_length(self, num_tokens: int) -> None:
        if num_tokens >= self.max_model_len:
            raise InvalidRequestError(
                "prompt",
                f"prompt has {num_tokens} tokens; the context holds {self.max_model_len}, "
                f"leaving no room to generate",
            )

    def _make_sequences(
        self, request_id: str, token_ids: list[int], params: SamplingParams, priority: int, cache_salt: str | None
    ) -> list[Sequence]:
        seqs: list[Sequence] = []
        shares_prefix = shared_prefix_len(len(token_ids), self.block_manager.block_size) > 0
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                seed = (params.seed + index * 1_000_003) % 2**63  # any integer the API takes
                generator = torch.Generator(self.device).manual_seed(seed)
            source = seqs[0] if index > 0 and shares_prefix else None
            seqs.append(Sequence(next(self._seq_ids), request_id, index, token_ids, params, priority, generator, source,
                                 cache_salt))
        return seqs

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")

    # ---- the step ----------------------------------------------------------------------------

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        """Runs one batched forward pass; returns the requests that gained tokens or finished."""
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        self._mark_scheduled(sched)
        result = self.runner.execute(sched)
        self.scheduler.update(sched, self._num_rejected(sched, result))
        return self._process(result)

    def _num_rejected(self, sched: SchedulerOutput, result: RunnerOutput) -> list[int]:
        """Per scheduled sequence, the proposals the model did not accept (their KV is rolled back)."""
        produced = {seq.seq_id: len(tokens) for seq, tokens in zip(result.seqs, result.token_ids)}
        rejected = []
        for seq in sched.seqs:
            proposed = len(seq.spec_token_ids)
            accepted = produced[seq.seq_id] - 1 if proposed else 0
            if proposed and self.speculator is not None:
                self.speculator.record(seq, proposed, accepted)
            rejected.append(proposed - accepted)
        return rejected

    def _mark_scheduled(self, sched: SchedulerOutput) -> None:
        now = time.monotonic()
        for seq in sched.seqs:
            metrics = self.requests[seq.request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
        for seq in sched.preempted:
            self.requests[seq.request_id].metrics.num_preemptions += 1

    def _process(self, result: RunnerOutput) -> list[RequestOutput]:
        now = time.monotonic()
        touched: dict[str, Request] = {}
        for i, (seq, token_ids, logprobs) in enumerate(zip(result.seqs, result.token_ids, result.logprobs)):
            if result.hidden is not None:
                seq.hidden = result.hidden[i]
            request = self.requests[seq.request_id]
            detok = request.detokenizers[seq.index]
            for token_id in token_ids:  # several when proposals were accepted: up to the first that ends it
                finish = append_token(seq, detok, token_id, logprobs, self.tokenizer, self.tokenizer.eos_token_id,
                                      self.max_model_len)
                if finish is not None:
                    self.scheduler.finish(seq, *finish)
                    break
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            touched[request.request_id] = request
        outputs = []
        for request in touched.values():
            if request.finished:
                request.metrics.finished_time = now
                del self.requests[request.request_id]
            outputs.append(request.output())
        return outputs
