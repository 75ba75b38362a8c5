"""Speculator: before each step, proposals for the running sequences that can take them; after
it, the tally of what the model accepted."""

from __future__ import annotations

from dataclasses import dataclass

from tokenmill.config import SpeculativeConfig
from tokenmill.engine.sequence import Sequence
from tokenmill.spec.ngram import NgramProposer


@dataclass
class SpeculationStats:
    num_proposed: int = 0
    num_accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted / self.num_proposed if self.num_proposed else 0.0


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.proposer = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
        self.stats = SpeculationStats()

    def propose(self, running: list[Sequence]) -> None:
        """Sets spec_token_ids for each decoding sequence that verification can take."""
        for seq in running:
            k = self._room(seq)
            seq.spec_token_ids = self.proposer.propose(seq.token_ids, k) if k > 0 and _verifiable(seq) else []

    def _room(self, seq: Sequence) -> int:
        """Proposals that can still count: a step also adds the model's own token after them."""
        if seq.num_tokens - seq.num_computed_tokens != 1:  # prefilling
            return 0
        k = min(self.config.num_speculative_tokens, self.max_model_len - seq.num_tokens - 1)
        if seq.params.max_tokens is not None:
            k = min(k, seq.params.max_tokens - seq.num_output_tokens - 1)
        return k

    def record(self, num_proposed: int, num_accepted: int) -> None:
        self.stats.num_proposed += num_proposed
        self.stats.num_accepted += num_accepted


def _verifiable(seq: Sequence) -> bool:
    """Nothing that makes a token depend on more than its logits row: no penalties (they count the
    tokens before it), no min_tokens pending, and no logprobs requested (verification reports none)."""
    p = seq.params
    return (p.logprobs is None and seq.num_output_tokens >= p.min_tokens
            and p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty)
