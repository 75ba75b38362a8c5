"""The llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied embeddings."""

from __future__ import annotations

import functools

import torch
from torch import nn

from tokenmill.attention.base import AttentionPlan
from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.attention import PagedAttention
from tokenmill.model.causal_lm import PACKED_MODULES, CausalLM
from tokenmill.model.layers import RMSNorm, RotaryEmbedding, SiluAndMul
from tokenmill.model.parallel_layers import RowParallelLinear, ShardedMergedLinear, VocabParallelEmbedding
from tokenmill.quant.tensor import QuantizedTensor



class LlamaAttention(nn.Module):
    """This rank's query heads and KV heads (all of them with one rank). A family that shares one
    RoPE table between layers, or attends over a window, passes them in."""

    def __init__(self, cfg: ArchConfig, tp: TensorParallel, rotary: RotaryEmbedding | None = None,
                 window: int | None = None) -> None:  # fmt: skip
        super().__init__()
        dim = self.head_dim = cfg.head_dim
        first_head, num_heads = tp.split(cfg.num_heads, "attention heads")
        first_kv, num_kv = tp.kv_heads(cfg.num_kv_heads)
        self.q_size, self.kv_size = num_heads * dim, num_kv * dim
        self.qkv_proj = ShardedMergedLinear(cfg.hidden_size, [self.q_size, self.kv_size, self.kv_size],
                                            PACKED_MODULES["qkv_proj"], [(cfg.num_heads * dim, first_head * dim),
                                            *[(cfg.num_kv_heads * dim, first_kv * dim)] * 2], bias=cfg.attention_bias)  # fmt: skip
        self.o_proj = RowParallelLinear(self.q_size, cfg.hidden_size, first_head * dim, tp)
        self.rotary = rotary or RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta,
                                                cfg.rope_scaling, cfg.unbounded_context)  # fmt: skip
        self.attn = PagedAttention(num_heads, num_kv, cfg.head_dim, window, cfg.attention_sinks if window else 0)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = q.view(-1, self.q_size // self.head_dim, self.head_dim), k.view(-1, self.kv_size // self.head_dim,
                                                                                self.head_dim)  # fmt: skip
        sink_queries = None
        if self.attn.sinks:  # the same queries, placed no farther from the sinks than the model was trained for
            sink_queries = self.position(positions.clamp(max=self.attn.sink_reach), q, k)[0]
        q, k = self.position(positions, q, k)
        return self.o_proj(self.attn(q, k, v.view_as(k), plan, sink_queries))

    def position(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head queries and keys ([T, heads, D]) placed by RoPE."""
        return self.rotary(positions, q, k)


class LlamaMLP(nn.Module):
    """A gated MLP: down(act(gate) * up); SwiGLU unless another activation is given (Gemma's GeGLU)."""

    def __init__(self, cfg: ArchConfig, tp: TensorParallel, act: nn.Module | None = None) -> None:
        super().__init__()
        first, size = tp.split(cfg.intermediate_size, "MLP columns")
        self.gate_up_proj = ShardedMergedLinear(cfg.hidden_size, [size] * 2, PACKED_MODULES["gate_up_proj"],
                                                [(cfg.intermediate_size, first)] * 2)
        self.down_proj = RowParallelLinear(size, cfg.hidden_size, first, tp)
        self.act = act or SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, tp: TensorParallel, window: int | None = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, tp, window=window)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg, tp)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, plan: AttentionPlan
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, plan)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """With pipeline parallelism, a stage's part: its layers (the others' places hold nn.Identity,
    so that parameter names stay the checkpoint's), the embedding on the first stage (and on the
    last where the LM head shares it), the final norm on the last."""

    def __init__(self, cfg: ArchConfig, tp: TensorParallel, pp: PipelineParallel) -> None:
        super().__init__()
        self.pp, self.layer_range = pp, pp.layers(cfg.num_layers)
        holds_embedding = pp.is_first or (pp.is_last and cfg.tie_word_embeddings)
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp) if holds_embedding else None
        self.layers = nn.ModuleList(self.make_layer(cfg, i, tp) if i in self.layer_range else nn.Identity()
                                    for i in range(cfg.num_layers))  # fmt: skip
        self.norm = self.make_norm(cfg) if pp.is_last else None

    # What a family built on these layers changes (gemma3.py): its layer, its norm, its embedding.
    def make_layer(self, cfg: ArchConfig, index: int, tp: TensorParallel) -> nn.Module:
        return LlamaDecoderLayer(cfg, tp, cfg.window(index))

    def make_norm(self, cfg: ArchConfig) -> nn.Module:
        return RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, plan: AttentionPlan,
        num_layers: int | None = None, inputs_embeds: torch.Tensor | None = None,
        intermediate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """num_layers: only the first ones (a self-draft), their output normed as the last layer's is.
        inputs_embeds: the tokens already embedded, in place of input_ids. intermediate: on a stage
        after the first, the previous stage's output. A stage before the last returns its layers'
        output and residual stacked, [2, tokens, hidden], for the next stage."""
        if intermediate is not None:
            x, residual = intermediate.unbind(0)
        else:
            x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        for layer in self.layers[self.layer_range.start : num_layers or self.layer_range.stop]:
            x, residual = layer(positions, x, residual, plan)
        if not self.pp.is_last:
            return torch.stack((x, residual))
        return self.norm(x, residual)[0]


class LlamaForCausalLM(CausalLM):
    gguf_layer_names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    }  # fmt: skip

    def __init__(self, cfg: ArchConfig, tp: TensorParallel = TensorParallel(),
                 pp: PipelineParallel = PipelineParallel()) -> None:  # fmt: skip
        super().__init__(cfg, tp, pp, LlamaModel(cfg, tp, pp))

    @classmethod
    def from_gguf(cls, name: str, tensor: torch.Tensor | QuantizedTensor, cfg: ArchConfig,
                  ) -> torch.Tensor | QuantizedTensor:  # fmt: skip
        """llama.cpp stores llama's q and k rows interleaved for its RoPE: back to rotate-half order."""
        heads = {"q_proj": cfg.num_heads, "k_proj": cfg.num_kv_heads}.get(name.split(".")[-2])
        if heads is None or not name.endswith(".weight"):
            return tensor
        unpermute = functools.partial(_unpermute_rope, num_heads=heads)
        return tensor.map_rows(unpermute) if isinstance(tensor, QuantizedTensor) else unpermute(tensor)


def _unpermute_rope(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
