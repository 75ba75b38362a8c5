"""Draft model: a smaller model with the same vocabulary guesses the next tokens one at a time
(greedy), batched over the sequences.

Its KV lives at the same block ids as the model's: the sequences' own block tables address it.
A separate draft model has a pool of its own and first catches up on the tokens it has not seen
(the prompt, the model's corrections). A self-draft, the model's first N layers with its final
norm and LM head, shares those layers' KV with the model (same weights, same tokens), so it
catches up on nothing. Either way the guesses' KV goes to the slots that verifying them fills
again in the next pass, and rejected guesses leave only stale entries past the sequence's end.
"""

from __future__ import annotations

import torch
from torch import nn

from tokenmill.attention.base import AttentionBackend
from tokenmill.runner.batch import query_batch
from tokenmill.speculative.speculator import ProposalInput


class DraftProposer:
    max_tokens: int | None = None

    def __init__(self, model: nn.Module, attention: AttentionBackend, block_size: int, device: torch.device,
                 num_layers: int | None = None) -> None:
        """num_layers: a self-draft of model's first layers; None: model is a separate draft model."""
        num_model_layers = len(model.attention_layers())
        if num_layers is not None and num_layers >= num_model_layers:
            raise ValueError(f"draft_layers must be fewer than the model's {num_model_layers} layers, got {num_layers}")
        self.model, self.attention, self.block_size = model, attention, block_size
        self.device, self.num_layers = device, num_layers

    @torch.inference_mode()
    def propose(self, seqs: list[ProposalInput], num_tokens: list[int]) -> list[list[int]]:
        """The scheduler kept KV slots for the guesses (SchedulerConfig.num_lookahead_tokens)."""
        drafts: list[list[int]] = [[] for _ in seqs]
        # Step 0 feeds what the draft has not computed, up to the last token; later steps, a guess.
        starts = [self._first_uncomputed(item) for item in seqs]
        live = sorted(range(len(seqs)), key=lambda i: starts[i] < seqs[i].num_tokens - 1)  # single queries first
        step = 0
        while live:
            inputs, begin, lengths = [], [], []
            for i in live:
                known = seqs[i].num_tokens
                start = starts[i] if step == 0 else known - 1 + step
                inputs += seqs[i].token_ids[start:] if step == 0 else [drafts[i][-1]]
                begin.append(start)
                lengths.append(known - start if step == 0 else 1)
            batch, positions = query_batch([seqs[i].seq.block_table for i in live], begin, lengths, self.block_size,
                                           self.device)
            hidden = self.model(torch.tensor(inputs, device=self.device), positions, self.attention.plan(batch),
                                self.num_layers)
            last_rows = torch.tensor(lengths, device=self.device).cumsum(0) - 1
            for i, guess in zip(live, self.model.compute_logits(hidden[last_rows]).argmax(-1).tolist()):
                drafts[i].append(guess)
            step += 1
            live = [i for i in live if num_tokens[i] > step]
        for item, k in zip(seqs, num_tokens):
            item.seq.num_draft_computed = item.num_tokens - 1 + k  # all but the last guess
        return drafts

    def _first_uncomputed(self, item: ProposalInput) -> int:
        """A self-draft's earlier KV is the model's; a separate draft's is taken as good up to what
        both computed (the model's rollbacks and preemptions undo the draft's as well). Where a
        cached block's draft KV was never written, guesses get worse, never the output."""
        if self.num_layers is not None:
            return item.num_tokens - 1
        return min(item.seq.num_draft_computed, item.num_computed_tokens)
