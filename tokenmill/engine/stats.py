"""EngineStats: the engine's counters in one snapshot, for metrics, benchmarks and tools."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def spec_acceptance_rate(self) -> float:
        return self.spec_accepted_tokens / self.spec_draft_tokens if self.spec_draft_tokens else 0.0
