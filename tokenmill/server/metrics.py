"""Prometheus metrics under vLLM's names with a `tokenmill:` prefix, in a registry of their own."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tokenmill.engine.stats import EngineStats, RankStats
from tokenmill.outputs import RequestMetrics

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)


class ServerMetrics:
    def __init__(self, model_name: str, max_loras: int = 0) -> None:
        self.max_loras = max_loras
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"tokenmill:{name}", doc, labels, buckets=_LATENCY_BUCKETS, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"tokenmill:{name}", doc, labels, registry=self.registry)

        self.time_to_first_token = histogram("time_to_first_token_seconds", "Time to first token, from arrival")
        self.inter_token_latency = histogram("inter_token_latency_seconds", "Time between tokens of a request")
        self.e2e_latency = histogram("e2e_request_latency_seconds", "End-to-end request latency")
        self.queue_time = histogram("request_queue_time_seconds", "Time waiting before first scheduled")
        self.prefill_time = histogram("request_prefill_time_seconds", "Time from first scheduled to first token")
        self.decode_time = histogram("request_decode_time_seconds", "Time from first token to the last")
        self.running = gauge("num_requests_running", "Sequences in the running batch")
        self.waiting = gauge("num_requests_waiting", "Sequences waiting to be scheduled")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full)")
        self.prompt_tokens = Counter("tokenmill:prompt_tokens", "Prompt tokens of finished requests", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("tokenmill:generation_tokens", "Generated tokens", labels,
                                         registry=self.registry)
        self.preemptions = Counter("tokenmill:num_preemptions", "Sequences preempted for KV blocks", labels,
                                   registry=self.registry)
        self.prefix_queries = Counter("tokenmill:prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                      labels, registry=self.registry)
        self.prefix_hits = Counter("tokenmill:prefix_cache_hits", "Prompt tokens the prefix cache supplied", labels,
                                   registry=self.registry)
        self.spec_drafts = Counter("tokenmill:spec_decode_num_draft_tokens", "Tokens proposed by speculative decoding",
                                   [*labels, "method"], registry=self.registry)
        self.spec_accepted = Counter("tokenmill:spec_decode_num_accepted_tokens",
                                     "Proposed tokens the model accepted", [*labels, "method"], registry=self.registry)
        self.grammar_compile = Counter("tokenmill:structured_output_compile_seconds",
                                       "Seconds compiling output constraints and building their matchers", labels,
                                       registry=self.registry)
        self.grammar_mask = Counter("tokenmill:structured_output_mask_seconds",
                                    "Seconds computing and applying structured outputs' token masks", labels,
                                    registry=self.registry)
        self.grammar_steps = Counter("tokenmill:structured_output_masked_steps",
                                     "Steps that masked constrained rows (mask seconds / steps: the time per step)",
                                     labels, registry=self.registry)
        self.lora_loads = Counter("tokenmill:lora_loads", "LoRA adapters put into a slot", labels,
                                  registry=self.registry)
        self.lora_swaps = Counter("tokenmill:lora_swaps", "LoRA loads that evicted another adapter", labels,
                                  registry=self.registry)
        self.kv_transfers = Counter("tokenmill:kv_transfers", "Disaggregated decode: prompts whose KV was pulled "
                                    "from the prefill instance, or prefilled here instead", [*labels, "result"],
                                    registry=self.registry)  # fmt: skip
        # every rank of a split model (the one rank otherwise), labelled by its rank and pipeline stage
        rank_labels = [*labels, "rank", "pipeline_stage"]
        self.rank_steps = Counter("tokenmill:rank_steps", "Steps (micro-batches) each rank ran", rank_labels,
                                  registry=self.registry)
        self.rank_collective_seconds = Counter("tokenmill:rank_collective_seconds", "Seconds each rank spent in "
                                               "tensor-parallel collectives", rank_labels, registry=self.registry)
        self.rank_collective_bytes = Counter("tokenmill:rank_collective_bytes", "Bytes each rank's tensor-parallel "
                                             "collectives carried", rank_labels, registry=self.registry)
        self.rank_activation_bytes = Counter("tokenmill:rank_activation_bytes", "Bytes each rank sent the next "
                                             "pipeline stage", rank_labels, registry=self.registry)
        self.rank_peak_memory = Gauge("tokenmill:rank_peak_resident_memory_bytes", "Each rank's process's peak "
                                      "resident memory", rank_labels, registry=self.registry)
        self._seen_ranks: dict[int, RankStats] = {}
        # vLLM's: the adapters in use, as labels of one gauge whose value is when they were observed
        self.lora_info = Gauge("tokenmill:lora_requests_info", "Running and waiting requests' LoRA adapters",
                               ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
                               registry=self.registry)
        self.success = Counter("tokenmill:request_success", "Requests finished, by reason",
                               [*labels, "finished_reason"], registry=self.registry)
        self.rejected = Counter("tokenmill:request_rejected", "Requests refused, by reason", [*labels, "reason"],
                                registry=self.registry)
        self.model_name = model_name
        self._seen = EngineStats(0, 0, 0.0, 0)  # the cumulative counts already added

    def _observe_ranks(self, ranks: tuple[RankStats, ...]) -> None:
        for rank in ranks:
            seen = self._seen_ranks.get(rank.rank, RankStats(rank.rank, rank.pipeline_stage, 0))
            labels = (self.model_name, str(rank.rank), str(rank.pipeline_stage))
            self.rank_steps.labels(*labels).inc(_gained(rank.steps, seen.steps))
            self.rank_collective_seconds.labels(*labels).inc(
                _gained(rank.collective_seconds, seen.collective_seconds))
            self.rank_collective_bytes.labels(*labels).inc(_gained(rank.collective_bytes, seen.collective_bytes))
            self.rank_activation_bytes.labels(*labels).inc(_gained(rank.activation_bytes, seen.activation_bytes))
            self.rank_peak_memory.labels(*labels).set(rank.peak_resident_bytes)
            self._seen_ranks[rank.rank] = rank

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_engine(self, stats: EngineStats) -> None:
        name = self.model_name
        self.running.labels(name).set(stats.num_running)
        self.waiting.labels(name).set(stats.num_waiting)
        self.kv_usage.labels(name).set(stats.kv_cache_usage)
        seen = self._seen
        self.preemptions.labels(name).inc(_gained(stats.num_preemptions, seen.num_preemptions))
        self.prefix_queries.labels(name).inc(_gained(stats.prefix_cache_queries, seen.prefix_cache_queries))
        self.prefix_hits.labels(name).inc(_gained(stats.prefix_cache_hits, seen.prefix_cache_hits))
        self.grammar_compile.labels(name).inc(_gained(stats.grammar_compile_seconds, seen.grammar_compile_seconds))
        self.grammar_mask.labels(name).inc(_gained(stats.grammar_mask_seconds, seen.grammar_mask_seconds))
        self.grammar_steps.labels(name).inc(_gained(stats.grammar_masked_steps, seen.grammar_masked_steps))
        self.lora_loads.labels(name).inc(_gained(stats.lora_loads, seen.lora_loads))
        self.lora_swaps.labels(name).inc(_gained(stats.lora_swaps, seen.lora_swaps))
        self._observe_ranks(stats.ranks)
        self.kv_transfers.labels(name, "pulled").inc(_gained(stats.kv_transfers_pulled, seen.kv_transfers_pulled))
        self.kv_transfers.labels(name, "fallback").inc(
            _gained(stats.kv_transfer_fallbacks, seen.kv_transfer_fallbacks))
        if stats.running_adapters or stats.waiting_adapters or seen.running_adapters or seen.waiting_adapters:
            self.lora_info.clear()
            self.lora_info.labels(str(self.max_loras), ",".join(stats.running_adapters),
                                  ",".join(stats.waiting_adapters)).set(time.time())
        if stats.speculative_method is not None:  # acceptance rate: accepted / draft tokens
            method = stats.speculative_method
            self.spec_drafts.labels(name, method).inc(_gained(stats.spec_draft_tokens, seen.spec_draft_tokens))
            self.spec_accepted.labels(name, method).inc(
                _gained(stats.spec_accepted_tokens, seen.spec_accepted_tokens))
        self._seen = stats

    def observe_tokens(self, num_tokens: int, since_last_s: float | None) -> None:
        """A request gained tokens; since_last_s is the gap since its previous ones (None: its first)."""
        self.generation_tokens.labels(self.model_name).inc(num_tokens)
        if since_last_s is not None:
            self.inter_token_latency.labels(self.model_name).observe(since_last_s)

    def observe_finished(
        self, engine: RequestMetrics, ttft_s: float | None, e2e_s: float, num_prompt_tokens: int, reasons: list[str]
    ) -> None:
        name = self.model_name
        if ttft_s is not None:
            self.time_to_first_token.labels(name).observe(ttft_s)
        self.e2e_latency.labels(name).observe(e2e_s)
        if engine.first_scheduled_time is not None:
            self.queue_time.labels(name).observe(engine.first_scheduled_time - engine.arrival_time)
            if engine.first_token_time is not None:
                self.prefill_time.labels(name).observe(engine.first_token_time - engine.first_scheduled_time)
        if engine.first_token_time is not None and engine.finished_time is not None:
            self.decode_time.labels(name).observe(engine.finished_time - engine.first_token_time)
        self.prompt_tokens.labels(name).inc(num_prompt_tokens)
        for reason in reasons:
            self.success.labels(name, reason).inc()

    def observe_rejected(self, reason: str) -> None:
        self.rejected.labels(self.model_name, reason).inc()


def _gained(total: float, seen: float) -> float:
    """What a core's running total gained since it was last seen: all of it when it is smaller, as
    after the core was restarted (its totals start again from zero)."""
    return total if total < seen else total - seen
