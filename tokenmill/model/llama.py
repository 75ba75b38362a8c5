"""The llama family: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied embeddings."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tokenmill.attention.base import AttentionPlan
from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.attention import PagedAttention
from tokenmill.model.layers import MergedLinear, RMSNorm, RotaryEmbedding, SiluAndMul, check_shape, default_weight_loader
from tokenmill.model.parallel_layers import (
    ParallelLMHead, RowParallelLinear, ShardedMergedLinear, VocabParallelEmbedding, gather_logits,
)
from tokenmill.quant.tensor import QuantizedTensor, concat_rows

# Hugging Face checkpoint matrices that tokenmill stacks into one layer, in its row order.
PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


class LlamaAttention(nn.Module):
    """This rank's query heads and KV heads (all of them with one rank)."""

    def __init__(self, cfg: ArchConfig, tp: TensorParallel) -> None:
        super().__init__()
        dim = self.head_dim = cfg.head_dim
        first_head, num_heads = tp.split(cfg.num_heads, "attention heads")
        first_kv, num_kv = tp.kv_heads(cfg.num_kv_heads)
        self.q_size, self.kv_size = num_heads * dim, num_kv * dim
        self.qkv_proj = ShardedMergedLinear(cfg.hidden_size, [self.q_size, self.kv_size, self.kv_size],
                                            PACKED_MODULES["qkv_proj"], [(cfg.num_heads * dim, first_head * dim),
                                            *[(cfg.num_kv_heads * dim, first_kv * dim)] * 2], bias=cfg.attention_bias)  # fmt: skip
        self.o_proj = RowParallelLinear(self.q_size, cfg.hidden_size, first_head * dim, tp)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling)
        self.attn = PagedAttention(num_heads, num_kv, cfg.head_dim)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.q_size // self.head_dim, self.head_dim)
        k = k.view(-1, self.kv_size // self.head_dim, self.head_dim)
        q, k = self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v.view_as(k), plan))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ArchConfig, tp: TensorParallel) -> None:
        super().__init__()
        first, size = tp.split(cfg.intermediate_size, "MLP columns")
        self.gate_up_proj = ShardedMergedLinear(cfg.hidden_size, [size] * 2, PACKED_MODULES["gate_up_proj"],
                                                [(cfg.intermediate_size, first)] * 2)
        self.down_proj = RowParallelLinear(size, cfg.hidden_size, first, tp)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, tp)
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
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, tp) if i in self.layer_range else nn.Identity()
                                    for i in range(cfg.num_layers))  # fmt: skip
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if pp.is_last else None

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
            x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        for layer in self.layers[self.layer_range.start : num_layers or self.layer_range.stop]:
            x, residual = layer(positions, x, residual, plan)
        if not self.pp.is_last:
            return torch.stack((x, residual))
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    packed_modules_mapping = PACKED_MODULES

    def __init__(self, cfg: ArchConfig, tp: TensorParallel = TensorParallel(),
                 pp: PipelineParallel = PipelineParallel()) -> None:  # fmt: skip
        super().__init__()
        self.cfg, self.tp = cfg, tp
        self.model = LlamaModel(cfg, tp, pp)
        self.lm_head = ParallelLMHead(cfg.hidden_size, cfg.vocab_size, tp) if pp.is_last else None
        if cfg.tie_word_embeddings and pp.is_last:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, plan: AttentionPlan,
        num_layers: int | None = None, inputs_embeds: torch.Tensor | None = None,
        intermediate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, plan, num_layers, inputs_embeds, intermediate)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return gather_logits(self.lm_head(hidden), self.cfg.vocab_size, self.tp).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [self.model.layers[i].self_attn.attn for i in self.model.layer_range]

    def load_weights(
        self, weights: Iterable[tuple[str, torch.Tensor | QuantizedTensor]]
    ) -> dict[str, QuantizedTensor]:
        """Copies Hugging Face-named weights in, each by its parameter's weight loader; the pieces of a
        packed module (q/k/v, gate/up) go into their shard of the merged layer.

        Quantized matrices are not copied but returned, stacked in the layer's shard order, by layer
        name, for tokenmill.quant.apply.install_quantized to put in place."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        quantized: dict[str, dict[str | None, QuantizedTensor]] = {}
        for name, tensor in weights:
            if "rotary_emb" in name or self._is_tied_head(name) or self.on_other_stage(name):
                continue
            target, shard = self._target(name)
            if target not in params:
                raise KeyError(f"checkpoint weight {name!r} has no place in {type(self).__name__}")
            try:
                if isinstance(tensor, QuantizedTensor):
                    tensor = self._rank_part(target, shard, tensor)
                    check_shape(self._destination(target, shard), tensor, "quantized matrix")
                    quantized.setdefault(target.removesuffix(".weight"), {})[shard] = tensor
                else:
                    self._load(params[target], tensor, shard)
            except ValueError as err:
                raise ValueError(f"weight {name!r}: {err}") from None
            loaded.add(name)
        self._check_complete(params, loaded)
        return {layer: self._stack_quantized(layer, shards) for layer, shards in quantized.items()}

    def on_other_stage(self, name: str) -> bool:
        """Whether the named weight belongs to a module another pipeline stage holds."""
        module = self
        for part in name.split(".")[:-1]:
            child = getattr(module, part, False)  # False: no such part (q_proj, packed in qkv_proj here)
            if child is None or isinstance(child, nn.Identity):
                return True
            if not isinstance(child, nn.Module):
                return False
            module = child
        return False

    def _is_tied_head(self, name: str) -> bool:
        return name == "lm_head.weight" and self.cfg.tie_word_embeddings

    def _target(self, name: str) -> tuple[str, str | None]:
        """The parameter a checkpoint weight loads into, and its shard id there (None: the whole)."""
        parent, module, kind = _split_name(name)
        for packed, shard_ids in self.packed_modules_mapping.items():
            if module in shard_ids:
                return f"{parent}.{packed}.{kind}", module
        return name, None

    @staticmethod
    def _load(param: nn.Parameter, tensor: torch.Tensor, shard: str | None) -> None:
        loader = getattr(param, "weight_loader", default_weight_loader)
        if shard is None:
            loader(param, tensor)
        else:
            loader(param, tensor, shard)

    def _rank_part(self, target: str, shard: str | None, tensor: QuantizedTensor) -> QuantizedTensor:
        """This tensor-parallel rank's part of a quantized checkpoint matrix, cut in its packed form."""
        if self.tp.size == 1:
            return tensor
        return self.get_submodule(target.rpartition(".")[0]).rank_part(tensor, shard)

    def _destination(self, target: str, shard: str | None) -> torch.Tensor:
        param = self.get_parameter(target)
        return param.data if shard is None else self.get_submodule(target.rpartition(".")[0]).shard_view(param, shard)

    def _stack_quantized(self, layer: str, shards: dict[str | None, QuantizedTensor]) -> QuantizedTensor:
        module = self.get_submodule(layer)
        order = module.shard_ids if isinstance(module, MergedLinear) else (None,)
        if set(shards) != set(order):
            raise ValueError(f"{layer} has both quantized and float shards; they cannot be stacked into one matrix")
        return concat_rows([shards[shard] for shard in order])

    def _check_complete(self, params: dict[str, torch.Tensor], loaded: set[str]) -> None:
        expected = {name for param in params if not self._is_tied_head(param) for name in self._sources(param)}
        missing = sorted(expected - loaded)
        if missing:
            raise ValueError(f"checkpoint is missing weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    def _sources(self, param: str) -> list[str]:
        """The checkpoint weights a parameter loads from: its pieces' names where it is packed."""
        parent, module, kind = _split_name(param)
        shard_ids = self.packed_modules_mapping.get(module)
        return [param] if shard_ids is None else [f"{parent}.{shard}.{kind}" for shard in shard_ids]


def _split_name(name: str) -> tuple[str, str, str]:
    """'model.layers.0.mlp.up_proj.weight' -> ('model.layers.0.mlp', 'up_proj', 'weight')."""
    module, _, kind = name.rpartition(".")
    parent, _, last = module.rpartition(".")
    return parent, last, kind
