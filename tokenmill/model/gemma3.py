"""Gemma 3 (text): llama's attention and MLP reshaped by Gemma's choices. The embedding is scaled
by sqrt(hidden); each layer has four RMSNorms of Gemma's (1 + weight) kind (before and after
attention, before and after the MLP) and RMSNorms over each query and key head; the MLP is GeGLU
with the tanh GELU; five of every six layers attend over a sliding window with RoPE of their own
base, the sixth over the whole context; the LM head is the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenmill.attention.base import AttentionPlan
from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.causal_lm import CausalLM
from tokenmill.model.layers import RotaryEmbedding
from tokenmill.model.llama import LlamaAttention, LlamaMLP, LlamaModel
from tokenmill.quant.tensor import QuantizedTensor


class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), in float32. The weight is Hugging Face's (a GGUF's, less one)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds the residual first (when given) and returns (normalized, new residual)."""
        if residual is not None:
            x = x + residual
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype), x


class GeluTanhAndMul(nn.Module):
    """GeGLU's activation: gelu_tanh(gate) * up, from the fused [gate | up] projection."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


class Gemma3Attention(LlamaAttention):
    """Llama's, with an RMSNorm over each query and key head before RoPE."""

    def __init__(self, cfg: ArchConfig, tp: TensorParallel, rotary: RotaryEmbedding, window: int | None) -> None:
        super().__init__(cfg, tp, rotary, window)
        self.q_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        # The backends scale scores by head_dim**-0.5; Gemma by query_pre_attn_scalar**-0.5.
        scalar = cfg.query_pre_attn_scalar or cfg.head_dim
        self.query_scale = (cfg.head_dim / scalar) ** 0.5 if scalar != cfg.head_dim else None

    def position(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = self.rotary(positions, self.q_norm(q)[0], self.k_norm(k)[0])
        return (q if self.query_scale is None else q * self.query_scale), k


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, index: int, rotary: RotaryEmbedding, tp: TensorParallel) -> None:
        super().__init__()
        norm = lambda: GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # noqa: E731
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        self.self_attn = Gemma3Attention(cfg, tp, rotary, cfg.window(index))
        self.mlp = LlamaMLP(cfg, tp, GeluTanhAndMul())

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, plan: AttentionPlan
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each block's output is normed before it joins the residual; the residual is added at the
        next norm, as in the llama layers."""
        x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(positions, x, plan))[0]
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x))[0], residual


class Gemma3Model(LlamaModel):
    """LlamaModel's stages and forward, with Gemma's layers, norm and scaled embedding."""

    def make_layer(self, cfg: ArchConfig, index: int, tp: TensorParallel) -> nn.Module:
        if not hasattr(self, "rotary"):  # one RoPE table per kind of layer, shared by its layers
            self.rotary = nn.ModuleDict({
                "global": RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling),
                "local": RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings,
                                         cfg.rope_local_theta or cfg.rope_theta, None),
            })  # fmt: skip
        return Gemma3DecoderLayer(cfg, index, self.rotary["local" if cfg.window(index) else "global"], tp)

    def make_norm(self, cfg: ArchConfig) -> nn.Module:
        return GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Scaled by sqrt(hidden), the scale rounded to the activations' dtype first, as Gemma's."""
        x = self.embed_tokens(input_ids)
        return x * torch.tensor(x.shape[-1] ** 0.5, dtype=x.dtype)


class Gemma3ForCausalLM(CausalLM):
    gguf_layer_names = {
        "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }  # fmt: skip

    def __init__(self, cfg: ArchConfig, tp: TensorParallel = TensorParallel(),
                 pp: PipelineParallel = PipelineParallel()) -> None:  # fmt: skip
        super().__init__(cfg, tp, pp, Gemma3Model(cfg, tp, pp))

    @classmethod
    def from_gguf(cls, name: str, tensor: torch.Tensor | QuantizedTensor, cfg: ArchConfig,
                  ) -> torch.Tensor | QuantizedTensor:  # fmt: skip
        """llama.cpp stores Gemma's norm weights with the one added: taken off again."""
        return tensor - 1 if name.endswith("norm.weight") and isinstance(tensor, torch.Tensor) else tensor

