"""Building the proposer a SpeculativeConfig names, from the model runner's parts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tokenmill.config import CacheConfig, SpeculativeConfig
from tokenmill.speculative.speculator import FirstProposal, Proposer

if TYPE_CHECKING:
    from tokenmill.runner.model_runner import ModelRunner


def make_proposer(config: SpeculativeConfig, runner: ModelRunner) -> Proposer:
    from tokenmill.speculative.ngram import NgramProposer

    ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "ngram":
        return ngram
    if config.method == "draft":
        return _draft_proposer(config, runner)
    from tokenmill.speculative.heads import DraftHeads, HeadsProposer, default_heads_path

    path = Path(config.model) if config.model is not None else default_heads_path(runner.model_config.model)
    if not path.is_file():
        raise FileNotFoundError(f"no draft heads at {path}: train them with `tokenmill train-draft`")
    heads = HeadsProposer(runner.model, DraftHeads.load(path, runner.arch.hidden_size).to(runner.device, runner.dtype))
    return heads if config.method == "heads" else FirstProposal([ngram, heads])


def _draft_proposer(config: SpeculativeConfig, runner: ModelRunner) -> Proposer:
    from tokenmill.model.loader import load_model
    from tokenmill.runner.kv_cache import block_bytes
    from tokenmill.runner.model_runner import ModelRunner
    from tokenmill.speculative.draft import DraftProposer

    if config.model is None:  # a self-draft
        return DraftProposer(runner.model, runner.attention, runner.block_size, runner.device, config.draft_layers)
    draft_config = replace(runner.model_config, model=Path(config.model), max_model_len=None)
    loaded = load_model(draft_config)
    if loaded.arch.vocab_size != runner.arch.vocab_size:
        raise ValueError(f"the draft model's vocabulary has {loaded.arch.vocab_size} tokens, the model's "
                         f"{runner.arch.vocab_size}: they must be the same")
    # A pool with as many blocks as the model's, so that the sequences' block tables address both.
    pool_bytes = runner.num_blocks * block_bytes(loaded.arch, runner.block_size, runner.dtype)
    draft = ModelRunner(loaded, draft_config, CacheConfig(runner.block_size, kv_cache_memory=pool_bytes))
    return DraftProposer(draft.model, draft.attention, runner.block_size, runner.device)
