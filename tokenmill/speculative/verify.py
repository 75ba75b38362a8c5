"""Verifying proposed tokens against the model's own choices, losslessly."""

from __future__ import annotations

import torch


def accept_greedy(targets: list[int], drafts: list[int]) -> list[int]:
    """targets: the model's greedy token after each of the 1 + k positions (the last computed token,
    then each draft); drafts: the k proposed tokens. Returns the tokens greedy decoding would have
    produced: the drafts up to the first the model disagrees with, then the model's own token
    there (or, all accepted, the token after the last draft)."""
    accepted = []
    for target, draft in zip(targets, drafts):
        accepted.append(target)
        if target != draft:
            return accepted
    return accepted + [targets[len(drafts)]]


def accept_sampled(probs: torch.Tensor, drafts: list[int], generator: torch.Generator,
                   draft_probs: torch.Tensor | None = None) -> list[int]:
    """Rejection sampling (Leviathan et al. 2023; Chen et al. 2023): what it returns is distributed
    exactly as sampling token by token from the model. probs: [1 + k, V], the model's sampling
    distribution after the last computed token and after each draft; draft_probs: [k, V], the
    proposer's (None: it proposed each draft for certain, as prompt lookup does). Draft i is
    accepted with probability min(1, p(x) / q(x)); at the first rejection the token comes from
    max(p - q, 0), normalized; with every draft accepted, one more comes from the last row."""
    k = len(drafts)
    rows, ids = torch.arange(k, device=probs.device), torch.tensor(drafts, device=probs.device)
    ratio = probs[rows, ids] if draft_probs is None else probs[rows, ids] / draft_probs[rows, ids]
    uniform = torch.rand(k, generator=generator, device=probs.device)
    rejected = (uniform >= ratio).nonzero()
    if len(rejected) == 0:
        return drafts + [int(torch.multinomial(probs[k], 1, generator=generator))]
    i = int(rejected[0])
    if draft_probs is None:  # max(p - one-hot, 0): p without the rejected draft
        residual = probs[i].clone()
        residual[drafts[i]] = 0
    else:
        residual = (probs[i] - draft_probs[i]).clamp_min(0)
    return drafts[:i] + [int(torch.multinomial(residual, 1, generator=generator))]
