"""How many tokens to propose for a sequence: as many as have a fair chance of all being accepted.

Each proposed token is taken to be accepted with one rate, the sequence's own, estimated over its
recent steps (a moving average of accepted proposals, the first rejection counting against). A
step proposes the most tokens k whose chance rate^k of all being accepted stays at least
MIN_CHANCE, and always one, so that the estimate keeps being fed and recovers when the text turns
predictable. Per sequence, not per engine: a request's proposals, and so a seeded request's
sampled tokens, do not depend on what else ran before it."""

from __future__ import annotations

import math

MIN_CHANCE = 0.2  # below it, verifying one more token costs more than it is likely to save
DECAY = 0.1  # weight of each accept/reject outcome in the moving average (about ten outcomes' memory)


def proposal_length(rate: float, max_tokens: int) -> int:
    if rate >= 1.0:
        return max_tokens
    if rate <= 0.0:
        return 1
    return max(1, min(max_tokens, int(math.log(MIN_CHANCE) / math.log(rate))))


def updated_rate(rate: float, num_proposed: int, num_accepted: int) -> float:
    """After a step that accepted num_accepted of num_proposed (the next one rejected, unless all were)."""
    outcomes = [1.0] * num_accepted + ([0.0] if num_accepted < num_proposed else [])
    for outcome in outcomes:
        rate += DECAY * (outcome - rate)
    return rate
