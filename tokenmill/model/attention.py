"""PagedAttention: the model's attention layer over the paged KV cache (tokenmill.attention)."""

from __future__ import annotations

import torch
from torch import nn

from tokenmill.attention.base import AttentionPlan, KVCacheView


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, window: int | None = None) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window = window  # a sliding-window layer's span in tokens; None: the whole context
        self.kv = KVCacheView(torch.empty(0), torch.empty(0))  # bound by the model runner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        """q: [T, H, D], k and v: [T, KVH, D]; returns [T, H * D]."""
        plan.write(self.kv, k, v)
        return plan.attend(q, self.kv, self.window).flatten(1)
