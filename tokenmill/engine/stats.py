"""EngineStats: the engine's counters in one snapshot, for metrics, benchmarks and tools."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankStats:
    """One rank of a split model (the only one otherwise), since it started."""

    rank: int
    pipeline_stage: int
    steps: int  # steps it ran (micro-batches, with pipeline parallelism)
    collective_calls: int = 0  # its tensor-parallel all-reduces and all-gathers
    collective_bytes: int = 0  # their payloads
    collective_seconds: float = 0.0  # time in them, waiting for slower ranks included
    activation_bytes: int = 0  # what it sent the next pipeline stage
    peak_resident_bytes: int = 0  # its process's peak resident memory


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of blocks in use
    num_preemptions: int  # since start
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache, since start
    prefix_cache_hits: int = 0  # of those, tokens found
    speculative_method: str | None = None  # speculative decoding's proposer, if on
    spec_draft_tokens: int = 0  # tokens it proposed, since start
    spec_accepted_tokens: int = 0  # of those, tokens the model accepted
    num_blocks: int = 0  # the KV pool's blocks
    num_free_blocks: int = 0
    grammar_compile_seconds: float = 0.0  # structured outputs: compiling constraints and building matchers, since start
    grammar_mask_seconds: float = 0.0  # computing and applying the token masks, since start
    grammar_masked_steps: int = 0  # sampler calls that masked at least one row
    lora_loads: int = 0  # adapters put into a LoRA slot, since start
    lora_swaps: int = 0  # of those, loads that evicted another adapter
    running_adapters: tuple[str, ...] = ()  # names of the adapters running sequences use
    waiting_adapters: tuple[str, ...] = ()  # and of those waiting sequences ask for
    kv_transfers_pulled: int = 0  # disaggregated decode: prompts whose KV came from the prefill instance
    kv_transfer_fallbacks: int = 0  # and those it could not pull, prefilled here instead
    ranks: tuple[RankStats, ...] = ()  # every rank's, refreshed about once a second

    @property
    def spec_acceptance_rate(self) -> float:
        return self.spec_accepted_tokens / self.spec_draft_tokens if self.spec_draft_tokens else 0.0
