"""Speculator: before each step, proposals for the decoding sequences that can take them; after
it, the tally of what the model accepted, which sets how many tokens each sequence's next steps
propose."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from tokenmill.config import CacheConfig, ModelConfig, SpeculativeConfig
from tokenmill.engine.sequence import Sequence
from tokenmill.kv.block_manager import BlockManager
from tokenmill.runner.model_runner import ModelRunner
from tokenmill.speculative.adaptive import proposal_length, updated_rate


class Proposer(Protocol):
    max_tokens: int | None  # the most it can propose at once (None: any number)

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        """Up to num_tokens[i] guesses at the tokens after seqs[i]'s; fewer (or none) where unsure."""
        ...


class FirstProposal:
    """Proposers in turn: each sequence takes the first one's proposal where it made one, else the
    next one's (prompt lookup where the text repeats itself, draft heads elsewhere)."""

    def __init__(self, proposers: list[Proposer]) -> None:
        self.proposers = proposers
        limits = [p.max_tokens for p in proposers if p.max_tokens is not None]
        self.max_tokens = min(limits) if limits else None

    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
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


@dataclass
class SpeculationStats:
    num_proposed: int = 0
    num_accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted / self.num_proposed if self.num_proposed else 0.0


class Speculator:
    def __init__(self, config: SpeculativeConfig, max_model_len: int, proposer: Proposer) -> None:
        if proposer.max_tokens is not None and config.num_speculative_tokens > proposer.max_tokens:
            raise ValueError(f"num_speculative_tokens is {config.num_speculative_tokens}, but the {config.method} "
                             f"proposer makes at most {proposer.max_tokens}")
        self.config = config
        self.max_model_len = max_model_len
        self.proposer = proposer
        self.stats = SpeculationStats()

    def propose(self, running: list[Sequence]) -> None:
        """Sets spec_token_ids for each decoding sequence that verification can take."""
        for seq in running:
            seq.spec_token_ids = []
        decoding = [seq for seq in running if seq.num_tokens - seq.num_computed_tokens == 1]
        if len(decoding) >= self.config.disable_by_batch_size:
            return
        seqs, room = [], []
        for seq in decoding:
            n = self._room(seq, proposal_length(seq.spec_acceptance, self.config.num_speculative_tokens))
            if n > 0 and _verifiable(seq):
                seqs.append(seq)
                room.append(n)
        if seqs:
            for seq, proposal in zip(seqs, self.proposer.propose(seqs, room)):
                seq.spec_token_ids = proposal

    def _room(self, seq: Sequence, k: int) -> int:
        """Proposals that can still count: a step also adds the model's own token after them."""
        k = min(k, self.max_model_len - seq.num_tokens - 1)
        if seq.params.max_tokens is not None:
            k = min(k, seq.params.max_tokens - seq.num_output_tokens - 1)
        return k

    def record(self, seq: Sequence, num_proposed: int, num_accepted: int) -> None:
        self.stats.num_proposed += num_proposed
        self.stats.num_accepted += num_accepted
        seq.spec_acceptance = updated_rate(seq.spec_acceptance, num_proposed, num_accepted)


def make_proposer(config: SpeculativeConfig, runner: ModelRunner, block_manager: BlockManager,
                  model_config: ModelConfig) -> Proposer:
    from tokenmill.speculative.ngram import NgramProposer

    ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "ngram":
        return ngram
    if config.method == "draft":
        return _draft_proposer(config, runner, block_manager, model_config)
    from tokenmill.speculative.heads import DraftHeads, HeadsProposer, default_heads_path

    path = Path(config.model) if config.model is not None else default_heads_path(model_config.model)
    if not path.is_file():
        raise FileNotFoundError(f"no draft heads at {path}: train them with `tokenmill train-draft`")
    heads = HeadsProposer(runner.model, DraftHeads.load(path, runner.arch.hidden_size).to(runner.device, runner.dtype))
    return heads if config.method == "heads" else FirstProposal([ngram, heads])


def _draft_proposer(config: SpeculativeConfig, runner: ModelRunner, block_manager: BlockManager,
                    model_config: ModelConfig) -> Proposer:
    from tokenmill.model.loader import load_model
    from tokenmill.runner.kv_cache import block_bytes
    from tokenmill.speculative.draft import DraftProposer

    if config.model is None:  # a self-draft
        return DraftProposer(runner.model, runner.attention, block_manager, runner.device, config.draft_layers)
    draft_config = replace(model_config, model=Path(config.model), max_model_len=None)
    loaded = load_model(draft_config)
    if loaded.arch.vocab_size != runner.arch.vocab_size:
        raise ValueError(f"the draft model's vocabulary has {loaded.arch.vocab_size} tokens, the model's "
                         f"{runner.arch.vocab_size}: they must be the same")
    # A pool with as many blocks as the model's, so that the sequences' block tables address both.
    pool_bytes = block_manager.num_blocks * block_bytes(loaded.arch, block_manager.block_size, model_config.dtype)
    draft = ModelRunner(loaded, draft_config, CacheConfig(block_manager.block_size, kv_cache_memory=pool_bytes))
    return DraftProposer(draft.model, draft.attention, block_manager, runner.device)


def _verifiable(seq: Sequence) -> bool:
    """Nothing that makes a token depend on more than its logits row: no penalties (they count the
    tokens before it), no min_tokens pending, and no logprobs requested (verification reports none)."""
    p = seq.params
    return (p.logprobs is None and seq.num_output_tokens >= p.min_tokens
            and p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty)
