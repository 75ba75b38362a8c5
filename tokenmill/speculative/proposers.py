"""Building the proposer a SpeculativeConfig names, from the model the runner executes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tokenmill.config import ModelConfig, SpeculativeConfig
from tokenmill.runner.paged_model import PagedModel
from tokenmill.speculative.speculator import FirstProposal, Proposer


def make_proposer(config: SpeculativeConfig, target: PagedModel, model_config: ModelConfig) -> Proposer:
    from tokenmill.speculative.ngram import NgramProposer

    ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)
    if config.method == "ngram":
        return ngram
    if config.method == "draft":
        return _draft_proposer(config, target, model_config)
    from tokenmill.speculative.heads import DraftHeads, HeadsProposer, default_heads_path

    path = Path(config.model) if config.model is not None else default_heads_path(model_config.model)
    if not path.is_file():
        raise FileNotFoundError(f"no draft heads at {path}: train them with `tokenmill train-draft`")
    heads = DraftHeads.load(path, target.arch.hidden_size).to(model_config.device, model_config.activation_dtype)
    heads = HeadsProposer(target.model, heads)
    return heads if config.method == "heads" else FirstProposal([ngram, heads])


def _draft_proposer(config: SpeculativeConfig, target: PagedModel, model_config: ModelConfig) -> Proposer:
    from tokenmill.model.loader import load_model
    from tokenmill.runner.kv_cache import kv_storage_dtype
    from tokenmill.speculative.draft import DraftProposer

    if config.model is None:  # a self-draft
        return DraftProposer(target.model, target.attention, target.block_size, model_config.device,
                             config.draft_layers)
    draft_config = replace(model_config, model=Path(config.model), max_model_len=None)
    loaded = load_model(draft_config)
    if loaded.arch.vocab_size != target.arch.vocab_size:
        raise ValueError(f"the draft model's vocabulary has {loaded.arch.vocab_size} tokens, the model's "
                         f"{target.arch.vocab_size}: they must be the same")
    # As many blocks as the model's pool, so that the sequences' block tables address both.
    draft = PagedModel.build(loaded, draft_config, target.num_blocks, target.block_size,
                             kv_storage_dtype("auto", draft_config.activation_dtype))
    return DraftProposer(draft.model, draft.attention, target.block_size, model_config.device)
