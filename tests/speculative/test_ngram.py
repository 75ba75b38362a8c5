"""Prompt lookup on its own: which continuation it proposes."""

from tokenmill.speculative.ngram import NgramProposer


def test_proposes_what_followed_the_latest_match_of_the_longest_suffix():
    proposer = NgramProposer(min_n=1, max_n=3)
    tokens = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 5, 6, 7]
    # Suffix [5, 6, 7] occurs at 0 only (then 8, 9, 1); [6, 7] occurs later at 6, but longer wins.
    assert proposer.lookup(tokens, 3) == [8, 9, 1]
    assert proposer.lookup(tokens, 5) == [8, 9, 1, 6, 7]


def test_shorter_suffixes_then_nothing():
    proposer = NgramProposer(min_n=1, max_n=3)
    assert proposer.lookup([1, 2, 3, 4, 2], 2) == [3, 4]  # only [2] matches
    assert proposer.lookup([1, 2, 3, 4, 2], 9) == [3, 4, 2]  # as far as the tokens go
    assert proposer.lookup([1, 2, 3], 2) == []
    assert NgramProposer(min_n=2, max_n=3).lookup([1, 2, 3, 4, 2], 2) == []
    assert proposer.lookup([7], 2) == []
