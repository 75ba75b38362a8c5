"""PagedAttention: the model's attention layer over the paged KV cache (tokenmill.attention)."""

from __future__ import annotations

import torch
from torch import nn

from tokenmill.attention.base import AttentionPlan, KVCacheView, Sinks


class PagedAttention(nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, window: int | None = None,
                 sinks: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window = window  # a sliding-window layer's span in tokens; None: the whole context
        self.sinks = sinks  # with a window: the first tokens every query also sees (StreamingLLM)
        self.kv = KVCacheView(torch.empty(0), torch.empty(0))  # bound by the model runner

    @property
    def sink_reach(self) -> int:
        """The farthest position a query meets the sinks from: the sinks and the window after them."""
        assert self.window is not None
        return self.sinks + self.window - 1

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                sink_queries: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """q: [T, H, D], k and v: [T, KVH, D]; with sinks, the queries placed at most sink_reach on;
        returns [T, H * D]."""
        plan.write(self.kv, k, v)
        sinks = None if sink_queries is None else Sinks(self.sinks, sink_queries)
        return plan.attend(q, self.kv, self.window, sinks).flatten(1)
