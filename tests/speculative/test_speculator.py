"""The speculator's choices: which sequences get proposals, and how many tokens."""

import pytest

from tokenmill.config import SpeculativeConfig
from tokenmill.runner.input_batch import RunnerSequence
from tokenmill.sampling_params import SamplingParams
from tokenmill.speculative.adaptive import proposal_length, updated_rate
from tokenmill.speculative.ngram import NgramProposer
from tokenmill.speculative.speculator import FirstProposal, ProposalInput, Speculator

REPEATING = [5, 6, 7, 8, 9] * 4


def decoding(seq_id: int, tokens=REPEATING, **params) -> ProposalInput:
    """A sequence whose step just produced its last token."""
    seq = RunnerSequence(seq_id, list(tokens[:-1]), 4, SamplingParams(max_tokens=100, **params), [], len(tokens) - 2)
    return ProposalInput(seq, [tokens[-1]], hidden=None)


def speculator(**options) -> Speculator:
    config = SpeculativeConfig(**{"method": "ngram", "num_speculative_tokens": 4, **options})
    return Speculator(config, max_model_len=1000, proposer=NgramProposer(1, 3))


def test_small_batches_get_proposals_and_large_ones_none():
    spec = speculator(disable_by_batch_size=3)
    seqs = [decoding(i) for i in range(2)]
    assert spec.is_active(len(seqs)) and spec.propose(seqs) == {0: [5, 6, 7, 8], 1: [5, 6, 7, 8]}
    assert not spec.is_active(3)


def test_capped_and_unverifiable_sequences_get_none():
    spec = speculator()
    near_the_end = decoding(1)
    near_the_end.seq.params = SamplingParams(max_tokens=len(REPEATING) - 4 + 3)
    with_logprobs = decoding(2, logprobs=1)
    assert spec.propose([near_the_end, with_logprobs]) == {1: [5, 6]}  # 2 proposals + the model's own token


def test_length_follows_the_acceptance_rate():
    rate = 1.0
    assert proposal_length(rate, max_tokens=4) == 4
    for _ in range(100):
        rate = updated_rate(rate, num_proposed=4, num_accepted=0)
    assert proposal_length(rate, 4) == 1  # still one, so that the rate can be measured again
    for _ in range(100):
        rate = updated_rate(rate, num_proposed=1, num_accepted=1)
    assert proposal_length(rate, 4) == 4
    for _ in range(200):  # a rate of 2/3: 0.667^3 = 0.30 >= 0.2 > 0.667^4
        rate = updated_rate(rate, num_proposed=3, num_accepted=2)
    assert proposal_length(rate, 4) == 3


def test_each_sequence_gets_its_own_length():
    spec = speculator()
    rejected, fresh = decoding(0), decoding(1)
    rejected.seq.spec_token_ids = [1, 2, 3, 4]
    counts = [spec.record([rejected.seq], [[9]]) for _ in range(30)]  # every proposal rejected
    assert spec.propose([rejected, fresh]) == {0: [5], 1: [5, 6, 7, 8]}
    assert sum(c.num_draft_tokens for c in counts) == 120 and sum(c.num_accepted_tokens for c in counts) == 0


def test_first_proposal_falls_back_where_the_first_proposer_has_none():
    repeating, fresh = decoding(0), decoding(1, tokens=[1, 2, 3, 4, 2])  # a one-token match only
    combined = FirstProposal([NgramProposer(2, 3), NgramProposer(1, 1)])
    assert combined.propose([repeating, fresh], [2, 2]) == [[5, 6], [3, 4]]
    assert NgramProposer(2, 3).propose([fresh], [2]) == [[]]


def test_an_engine_config_without_room_for_a_drafts_guesses_is_refused(gguf_path):
    from tokenmill.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig

    draft = SpeculativeConfig(method="draft", draft_layers=4, num_speculative_tokens=3)
    with pytest.raises(ValueError, match="num_lookahead_tokens >= 3"):
        EngineConfig(ModelConfig(gguf_path), CacheConfig(), SchedulerConfig(), draft)
    assert EngineConfig.create(gguf_path, speculative_config={"method": "draft", "draft_layers": 4}).scheduler \
        .num_lookahead_tokens == 3
