"""Verification rules on synthetic distributions: greedy takes the model's own tokens; rejection
sampling leaves the model's distribution exactly as it was (chi-square tests)."""

import pytest
import torch

from tokenmill.speculative.verify import accept_greedy, accept_sampled

SIGNIFICANCE = 0.001  # a correct sampler fails a test this seldom


def test_greedy_takes_the_agreeing_prefix_and_the_models_next_token():
    assert accept_greedy([4, 5, 6, 7], [4, 5, 6]) == [4, 5, 6, 7]  # all accepted, plus the bonus token
    assert accept_greedy([4, 9, 6, 7], [4, 5, 6]) == [4, 9]  # corrected at the first disagreement
    assert accept_greedy([1, 5, 6, 7], [4, 5, 6]) == [1]


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of observed counts to probabilities (categories with p > 0)."""
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a token the model gives probability 0 was produced"
    expected = probs[keep] * counts.sum()
    statistic = ((counts[keep] - expected) ** 2 / expected).sum()
    degrees = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2), statistic / 2))


@pytest.mark.parametrize("proposer", ["point mass", "distribution"])
def test_rejection_sampling_keeps_the_models_distribution(proposer):
    """The first token is distributed as p0; after an accepted first draft, the second as p1. The
    proposer either names its drafts for certain (prompt lookup) or draws them from q (a draft
    model), as the theorem requires."""
    gen = torch.Generator().manual_seed(0)
    vocab, trials = 6, 20000
    probs = torch.rand(3, vocab, generator=gen).softmax(-1)
    probs[1, 5] = 0  # a token the model never picks must never come out
    probs[1] /= probs[1].sum()
    drafts = [2, 5]  # the second draft is a token the model rules out at that position
    draft_probs = None if proposer == "point mass" else torch.rand(2, vocab, generator=gen).softmax(-1)
    first, second = torch.zeros(vocab), torch.zeros(vocab)
    for _ in range(trials):
        if draft_probs is not None:
            drafts = torch.multinomial(draft_probs, 1, generator=gen).flatten().tolist()
        out = accept_sampled(probs, drafts, gen, draft_probs)
        first[out[0]] += 1
        if out[0] == drafts[0]:
            second[out[1]] += 1
    assert chi_square_p_value(first, probs[0]) > SIGNIFICANCE
    assert chi_square_p_value(second, probs[1]) > SIGNIFICANCE


def test_the_chi_square_test_can_fail():
    """The same test rejects a distribution that is off by a little: it has the power to."""
    gen = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.5, 0.3, 0.2])
    skewed = torch.tensor([0.47, 0.33, 0.2])
    counts = torch.bincount(torch.multinomial(skewed, 20000, replacement=True, generator=gen), minlength=3)
    assert chi_square_p_value(counts.float(), probs) < SIGNIFICANCE
