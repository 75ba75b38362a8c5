"""Prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last n
tokens, for n from prompt_lookup_max down to prompt_lookup_min. Costs no model call; pays on
text that repeats its context (code edits, extraction, summaries that quote)."""

from __future__ import annotations

import torch

from tokenmill.speculative.speculator import ProposalInput


class NgramProposer:
    max_tokens: int | None = None

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n

    def propose(self, seqs: list[ProposalInput], num_tokens: list[int]) -> list[list[int]]:
        return [self.lookup(item.token_ids, k) for item, k in zip(seqs, num_tokens)]

    def lookup(self, token_ids: list[int], num_tokens: int) -> list[int]:
        """Up to num_tokens guesses at what follows token_ids; [] where nothing matches."""
        tokens = torch.tensor(token_ids)
        for n in range(min(self.max_n, len(token_ids) - 1), self.min_n - 1, -1):
            # Windows that start early enough to have a continuation: all but the suffix itself.
            windows = tokens[:-1].unfold(0, n, 1)
            starts = (windows == tokens[-n:]).all(-1).nonzero()
            if len(starts):
                follow = int(starts[-1]) + n
                return token_ids[follow : follow + num_tokens]
        return []
