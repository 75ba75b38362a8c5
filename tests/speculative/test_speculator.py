"""The speculator's choices: which sequences get proposals, and how many tokens."""

from tokenmill.config import SpeculativeConfig
from tokenmill.engine.sequence import Sequence
from tokenmill.sampling_params import SamplingParams
from tokenmill.speculative.adaptive import proposal_length, updated_rate
from tokenmill.speculative.ngram import NgramProposer
from tokenmill.speculative.speculator import FirstProposal, Speculator

REPEATING = [5, 6, 7, 8, 9] * 4


def decoding(seq_id: int, **params) -> Sequence:
    seq = Sequence(seq_id, str(seq_id), 0, REPEATING, SamplingParams(max_tokens=100, **params))
    seq.num_computed_tokens = seq.num_tokens - 1
    return seq


def speculator(**options) -> Speculator:
    config = SpeculativeConfig(**{"method": "ngram", "num_speculative_tokens": 4, **options})
    return Speculator(config, max_model_len=1000, proposer=NgramProposer(1, 3))


def test_small_batches_get_proposals_and_large_ones_none():
    spec = speculator(disable_by_batch_size=3)
    seqs = [decoding(i) for i in range(2)]
    spec.propose(seqs)
    assert [s.spec_token_ids for s in seqs] == [[5, 6, 7, 8]] * 2
    seqs.append(decoding(2))
    spec.propose(seqs)
    assert [s.spec_token_ids for s in seqs] == [[]] * 3


def test_prefilling_capped_and_unverifiable_sequences_get_none():
    spec = speculator()
    prefilling = decoding(0)
    prefilling.num_computed_tokens = 3
    near_the_end = Sequence(1, "1", 0, REPEATING, SamplingParams(max_tokens=3))
    near_the_end.num_computed_tokens = near_the_end.num_tokens - 1
    with_logprobs = decoding(2, logprobs=1)
    spec.propose([prefilling, near_the_end, with_logprobs])
    assert prefilling.spec_token_ids == [] and with_logprobs.spec_token_ids == []
    assert near_the_end.spec_token_ids == [5, 6]  # 2 proposals + the model's own token = max_tokens


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
    for _ in range(30):
        spec.record(rejected, num_proposed=4, num_accepted=0)
    spec.propose([rejected, fresh])
    assert rejected.spec_token_ids == [5] and fresh.spec_token_ids == [5, 6, 7, 8]
    assert spec.stats.num_proposed == 120 and spec.stats.acceptance_rate == 0.0


def test_first_proposal_falls_back_where_the_first_proposer_has_none():
    repeating, fresh = decoding(0), decoding(1)
    fresh.token_ids = [1, 2, 3, 4, 2]  # a one-token match only
    combined = FirstProposal([NgramProposer(2, 3), NgramProposer(1, 1)])
    assert combined.propose([repeating, fresh], [2, 2]) == [[5, 6], [3, 4]]
    assert NgramProposer(2, 3).propose([fresh], [2]) == [[]]
