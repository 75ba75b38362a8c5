"""Draft heads (Medusa-style, fed the next token as EAGLE is): from the model's final hidden state
at the last computed position and the embedding of the token it produced, head i guesses the
token i + 1 places after that one. All heads run as one batched matrix product, and their
hidden states go through the model's own LM head in one call. Trained by `tokenmill train-draft`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tokenmill.speculative.speculator import ProposalInput

HEADS_DIR = Path(__file__).with_name("trained_heads")


class DraftHeads(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        # Zero-initialized, a head starts out as the identity: it guesses what the model would next.
        self.weight = nn.Parameter(torch.zeros(num_heads, 2 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(num_heads, hidden_size))

    @property
    def num_heads(self) -> int:
        return self.weight.shape[0]

    def forward(self, hidden: torch.Tensor, next_embedding: torch.Tensor) -> torch.Tensor:
        """hidden, next_embedding: [B, H]; returns each head's hidden state, [B, num_heads, H]."""
        x = torch.cat((hidden, next_embedding), -1)
        return hidden.unsqueeze(1) + F.silu(torch.einsum("bi,kih->bkh", x, self.weight) + self.bias)

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        tensors = {"weight": self.weight.detach().to(torch.bfloat16).contiguous(),
                   "bias": self.bias.detach().to(torch.bfloat16).contiguous()}
        save_file(tensors, str(path), metadata={"tokenmill": json.dumps(metadata)})

    @classmethod
    def load(cls, path: Path, hidden_size: int) -> DraftHeads:
        tensors = load_file(str(path))
        weight = tensors["weight"]
        if weight.shape[1:] != (2 * hidden_size, hidden_size):
            raise ValueError(f"heads in {path} are for hidden size {weight.shape[2]}, the model's is {hidden_size}")
        heads = cls(hidden_size, weight.shape[0])
        heads.load_state_dict({"weight": weight.float(), "bias": tensors["bias"].float()})
        return heads


def default_heads_path(model_path: Path) -> Path:
    """Where train-draft puts, and the heads method looks for, the heads of a model file."""
    return HEADS_DIR / f"{model_path.stem}.safetensors"


class HeadsProposer:
    """Proposes from each sequence's final hidden state (the runner passes it when this proposer is on)."""

    def __init__(self, model: nn.Module, heads: DraftHeads) -> None:
        self.model, self.heads = model, heads

    @property
    def max_tokens(self) -> int:
        return self.heads.num_heads

    @torch.inference_mode()
    def propose(self, seqs: list[ProposalInput], num_tokens: list[int]) -> list[list[int]]:
        hidden = torch.stack([item.hidden for item in seqs])
        last = torch.tensor([item.new_token_ids[-1] for item in seqs], device=hidden.device)
        states = self.heads(hidden, self.model.embed(last))
        guesses = self.model.compute_logits(states.flatten(0, 1)).argmax(-1).view(len(seqs), -1).tolist()
        return [row[:k] for row, k in zip(guesses, num_tokens)]
