"""The llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied embeddings."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from tokenmill.model.arch_config import ArchConfig
from tokenmill.attention.base import AttentionPlan
from tokenmill.model.attention import PagedAttention
from tokenmill.model.layers import Linear, RMSNorm, RotaryEmbedding, SiluAndMul
from tokenmill.quant.tensor import QuantizedTensor, concat_rows


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.head_dim = cfg.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=False)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.attn = PagedAttention(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.q_size // self.head_dim, self.head_dim)
        k = k.view(-1, self.kv_size // self.head_dim, self.head_dim)
        q, k = self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v.view_as(k), plan))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, plan: AttentionPlan
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, plan)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, plan: AttentionPlan, num_layers: int | None = None
    ) -> torch.Tensor:
        """num_layers: only the first ones (a self-draft), their output normed as the last layer's is."""
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers[:num_layers]:
            x, residual = layer(positions, x, residual, plan)
        return self.norm(x, residual)[0]


# Hugging Face checkpoint names of the pieces that tokenmill fuses into one matrix, and their slot.
_FUSED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}
_FUSED_NAME = re.compile(r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.")


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, plan: AttentionPlan, num_layers: int | None = None
    ) -> torch.Tensor:
        return self.model(input_ids, positions, plan, num_layers)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor | QuantizedTensor]]
    ) -> dict[str, QuantizedTensor]:
        """Copies Hugging Face-named weights in, fusing q/k/v and gate/up into one matrix each.

        Quantized matrices are not copied but returned, fused the same way, by layer name, for
        tokenmill.quant.apply.install_quantized to put in place."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        quantized: dict[str, dict[int | None, QuantizedTensor]] = {}
        for name, tensor in weights:
            if "rotary_emb" in name or (name == "lm_head.weight" and self.cfg.tie_word_embeddings):
                continue
            target, shard = self._target(name)
            if target not in params:
                raise KeyError(f"checkpoint weight {name!r} has no place in {type(self).__name__}")
            dest = self._destination(params[target], shard)
            if dest.shape != tensor.shape:
                raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
            if isinstance(tensor, QuantizedTensor):
                quantized.setdefault(target.removesuffix(".weight"), {})[shard] = tensor
            else:
                dest.copy_(tensor)
            loaded.add(target if shard is None else f"{target}#{shard}")
        self._check_complete(params, loaded)
        return {layer: concat_rows([shards[i] for i in sorted(shards, key=lambda i: i or 0)])
                for layer, shards in quantized.items()}

    @staticmethod
    def _target(name: str) -> tuple[str, int | None]:
        match = _FUSED_NAME.search(name)
        if match is None:
            return name, None
        fused, shard = _FUSED[match.group(1)]
        return name.replace(match.group(1), fused), shard

    def _destination(self, param: torch.Tensor, shard: int | None) -> torch.Tensor:
        return param.data if shard is None else param.data.narrow(0, *self._shard_range(param, shard))

    def _shard_range(self, param: torch.Tensor, shard: int) -> tuple[int, int]:
        cfg = self.cfg
        if param.shape[0] == 2 * cfg.intermediate_size:  # gate_up_proj
            return shard * cfg.intermediate_size, cfg.intermediate_size
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        return [(0, q), (q, kv), (q + kv, kv)][shard]

    def _check_complete(self, params: dict[str, torch.Tensor], loaded: set[str]) -> None:
        expected = set()
        for name in params:
            if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
                continue
            shards = 3 if ".qkv_proj." in name else 2 if ".gate_up_proj." in name else 0
            expected |= {f"{name}#{i}" for i in range(shards)} if shards else {name}
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
