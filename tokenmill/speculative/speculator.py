"""Speculator: inside the model runner, after each step's sampling, proposals for the sequences
that produced a token and can take more; and the tally of what verification accepted, which sets
how many tokens each sequence's next steps propose. Proposals leave in the RunnerOutput; the
scheduler schedules them next step (whole, or drops them for lack of budget)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch

from tokenmill.config import SpeculativeConfig
from tokenmill.engine.messages import SpecDecodeCounts
from tokenmill.runner.input_batch import RunnerSequence
from tokenmill.speculative.adaptive import proposal_length, updated_rate


@dataclass
class ProposalInput:
    """A sequence as a proposer sees it once its step's tokens are in."""

    seq: RunnerSequence
    new_token_ids: list[int]  # the tokens this step produced
    hidden: torch.Tensor | None  # [H]: the final hidden state that produced the last of them

    @cached_property
    def token_ids(self) -> list[int]:
        """All its tokens, the new ones included: built only for proposers that read them."""
        return self.seq.token_ids + self.new_token_ids

    @property
    def num_tokens(self) -> int:
        return self.seq.num_tokens + len(self.new_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.seq.num_prompt_tokens

    @property
    def num_computed_tokens(self) -> int:
        """Tokens with KV in the model's pool: all but the last (the model has not read it yet)."""
        return self.num_tokens - 1


class Proposer(Protocol):
    max_tokens: int | None  # the most it can propose at once (None: any number)

    def propose(self, seqs: list[ProposalInput], num_tokens: list[int]) -> list[list[int]]:
        """Up to num_tokens[i] guesses at the tokens after seqs[i]'s; fewer (or none) where unsure."""
        ...


class FirstProposal:
    """Proposers in turn: each sequence takes the first one's proposal where it made one, else the
    next one's (prompt lookup where the text repeats itself, draft heads elsewhere)."""

    def __init__(self, proposers: list[Proposer]) -> None:
        self.proposers = proposers
        limits = [p.max_tokens for p in proposers if p.max_tokens is not None]
        self.max_tokens = min(limits) if limits else None

    def propose(self, seqs: list[ProposalInput], num_tokens: list[int]) -> list[list[int]]:
        proposals: list[list[int]] = [[] for _ in seqs]
        pending = list(range(len(seqs)))
        for proposer in self.proposers:
            if not pending:
                break
            made = proposer.propose([seqs[i] for i in pending], [num_tokens[i] for i in pending])
            for i, proposal in zip(pending, made):
                proposals[i] = proposal
            pending = [i for i in pending if not proposals[i]]
        return proposals


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int, proposer: Proposer) -> None:
        if proposer.max_tokens is not None and config.num_speculative_tokens > proposer.max_tokens:
            raise ValueError(f"num_speculative_tokens is {config.num_speculative_tokens}, but the {config.method} "
                             f"proposer makes at most {proposer.max_tokens}")
        self.config = config
        self.max_model_len = max_model_len
        self.proposer = proposer

    @property
    def needs_hidden(self) -> bool:
        return self.config.uses_heads

    def record(self, seqs: list[RunnerSequence], token_ids: list[list[int]]) -> SpecDecodeCounts:
        """After verification: each sequence's acceptance rate, and the step's totals."""
        proposed = accepted = 0
        for seq, tokens in zip(seqs, token_ids):
            if seq.spec_token_ids:
                num_accepted = len(tokens) - 1
                seq.spec_acceptance = updated_rate(seq.spec_acceptance, len(seq.spec_token_ids), num_accepted)
                proposed, accepted = proposed + len(seq.spec_token_ids), accepted + num_accepted
        return SpecDecodeCounts(proposed, accepted)

    def is_active(self, num_decoding: int) -> bool:
        """Big batches already keep the hardware busy: no proposals for them."""
        return num_decoding < self.config.disable_by_batch_size

    def propose(self, inputs: list[ProposalInput]) -> dict[int, list[int]]:
        """Proposals for the next step, by seq id, for each sequence that verification can take."""
        chosen, room = [], []
        for item in inputs:
            n = self._room(item, proposal_length(item.seq.spec_acceptance, self.config.num_speculative_tokens))
            if n > 0 and _verifiable(item):
                chosen.append(item)
                room.append(n)
        if not chosen:
            return {}
        made = self.proposer.propose(chosen, room)
        return {item.seq.seq_id: proposal for item, proposal in zip(chosen, made) if proposal}

    def _room(self, item: ProposalInput, k: int) -> int:
        """Proposals that can still count: a step also adds the model's own token after them."""
        k = min(k, self.max_model_len - item.num_tokens - 1)
        if item.seq.params.max_tokens is not None:
            k = min(k, item.seq.params.max_tokens - item.num_output_tokens - 1)
        return k


def _verifiable(item: ProposalInput) -> bool:
    """Nothing that makes a token depend on more than its logits row: no penalties (they count the
    tokens before it), no min_tokens pending, no logprobs requested (verification reports none), and
    no logit_bias nor structured outputs (verification reads the model's own logits)."""
    p = item.seq.params
    return (p.logprobs is None and item.num_output_tokens >= p.min_tokens and not p.logit_bias
            and p.structured_outputs is None
            and p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty)
