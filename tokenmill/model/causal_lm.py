"""What every decoder-only architecture shares: the forward entry points, the LM head, and
loading Hugging Face-named weights (packed q/k/v and gate/up, quantized matrices, tensor- and
pipeline-parallel parts)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tokenmill.attention.base import AttentionPlan
from tokenmill.distributed.group import PipelineParallel, TensorParallel
from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.attention import PagedAttention
from tokenmill.model.layers import MergedLinear, check_shape, default_weight_loader
from tokenmill.model.parallel_layers import ParallelLMHead, gather_logits
from tokenmill.quant.tensor import QuantizedTensor, concat_rows

# Hugging Face checkpoint matrices that tokenmill stacks into one layer, in its row order.
PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


class CausalLM(nn.Module):
    """A decoder-only language model: `model` (embedding, layers, final norm, each layer's
    attention at `self_attn.attn`) and the LM head, with Hugging Face parameter names. An
    architecture subclasses it with its own `model`, and says how its GGUF tensors are named
    (`gguf_layer_names`) and whether they need changing on the way in (`from_gguf`)."""

    packed_modules_mapping = PACKED_MODULES
    # GGUF layer tensor names (llama.cpp's, after `blk.N.`) to Hugging Face names under `model.layers.N.`.
    gguf_layer_names: dict[str, str] = {}

    def __init__(self, cfg: ArchConfig, tp: TensorParallel, pp: PipelineParallel, model: nn.Module) -> None:
        super().__init__()
        self.cfg, self.tp = cfg, tp
        self.model = model
        self.lm_head = ParallelLMHead(cfg.hidden_size, cfg.vocab_size, tp) if pp.is_last else None
        if cfg.tie_word_embeddings and pp.is_last:
            self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def from_gguf(cls, name: str, tensor: torch.Tensor | QuantizedTensor, cfg: ArchConfig,
                  ) -> torch.Tensor | QuantizedTensor:  # fmt: skip
        """A GGUF tensor, under its Hugging Face name, as the Hugging Face checkpoint holds it."""
        return tensor

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, plan: AttentionPlan,
        num_layers: int | None = None, inputs_embeds: torch.Tensor | None = None,
        intermediate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, plan, num_layers, inputs_embeds, intermediate)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)

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
