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

from tokenmill.engine.sequence import Sequence
from tokenmill.kv.block_manager import BlockManager
from tokenmill.attention.base import AttentionBackend
from tokenmill.runner.batch import query_batch


class DraftProposer:
    max_tokens: int | None = None

    def __init__(self, model: nn.Module, attention: AttentionBackend, block_manager: BlockManager,
                 device: torch.device, num_layers: int | None = None) -> None:
        """num_layers: a self-draft of model's first layers; None: model is a separate draft model."""
        num_model_layers = len(model.attention_layers())
        if num_layers is not None and num_layers >= num_model_layers:
            raise ValueError(f"draft_layers must be fewer than the model's {num_model_layers} layers, got {num_layers}")
        self.model, self.attention, self.block_manager = model, attention, block_manager
        self.device, self.num_layers = device, num_layers

    @torch.inference_mode()
    def propose(self, seqs: list[Sequence], num_tokens: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        reserved = [i for i, (seq, k) in enumerate(zip(seqs, num_tokens)) if self._reserve(seq, k)]
        # Step 0 feeds what the draft has not computed, up to the last token; later steps, a guess.
        starts = {i: self._first_uncomputed(seqs[i]) for i in reserved}
        live = sorted(reserved, key=lambda i: starts[i] < seqs[i].num_tokens - 1)  # single queries first
        step = 0
        while live:
            inputs, begin, lengths = [], [], []
            for i in live:
                seq = seqs[i]
                start = starts[i] if step == 0 else seq.num_tokens - 1 + step
                inputs += seq.token_ids[start:] if step == 0 else [drafts[i][-1]]
                begin.append(start)
                lengths.append(seq.num_tokens - start if step == 0 else 1)
            batch, positions = query_batch([seqs[i].block_table for i in live], begin, lengths,
                                           self.block_manager.block_size, self.device)
            hidden = self.model(torch.tensor(inputs, device=self.device), positions, self.attention.plan(batch),
                                self.num_layers)
            last_rows = torch.tensor(lengths, device=self.device).cumsum(0) - 1
            for i, guess in zip(live, self.model.compute_logits(hidden[last_rows]).argmax(-1).tolist()):
                drafts[i].append(guess)
            step += 1
            live = [i for i in live if num_tokens[i] > step]
        for i in reserved:
            seqs[i].num_draft_computed = seqs[i].num_tokens - 1 + num_tokens[i]  # all but the last guess
        return drafts

    def _first_uncomputed(self, seq: Sequence) -> int:
        """A self-draft's earlier KV is the model's; a separate draft's is taken as good up to what
        both computed (the model's rollbacks and preemptions undo the draft's as well). Where a
        cached block's draft KV was never written, guesses get worse, never the output."""
        if self.num_layers is not None:
            return seq.num_tokens - 1
        return min(seq.num_draft_computed, seq.num_computed_tokens)

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for the KV of the last token and of all but the last guess (verification allocates
        the rest); False, and no guesses, when the pool has not got them."""
        needed = seq.num_tokens + num_tokens - 1
        if not self.block_manager.can_allocate(seq.block_table, needed):
            return False
        self.block_manager.allocate(seq.block_table, needed)
        return True
