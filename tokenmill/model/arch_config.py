"""ArchConfig: a model's architecture hyperparameters, read from a GGUF or a config.json."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenmill.distributed.group import PipelineParallel, TensorParallel


@dataclass(frozen=True)
class ArchConfig:
    architecture: str  # registry key, e.g. "llama"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] | None = None
    attention_bias: bool = False
    # Sliding-window attention: layers that attend to the last sliding_window tokens only (Hugging
    # Face's layer_types: "sliding_attention" or "full_attention"), with RoPE of their own base.
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None  # queries scaled by its inverse square root (default: head_dim)
    # Streaming (set by `streaming`): every layer windowed, the first attention_sinks tokens kept
    # visible, and the context unbounded (no query is ever placed beyond the sinks and the window).
    attention_sinks: int = 0
    unbounded_context: bool = False

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")

    def for_rank(self, tp: TensorParallel, pp: PipelineParallel) -> ArchConfig:
        """The heads one tensor-parallel rank holds, in its pipeline stage's layers (itself with one rank)."""
        if tp.size == 1 and pp.num_stages == 1:
            return self
        layers = pp.layers(self.num_layers)
        return replace(self, num_heads=tp.split(self.num_heads, "attention heads")[1],
                       num_kv_heads=tp.kv_heads(self.num_kv_heads)[1], num_layers=len(layers),
                       layer_types=None if self.layer_types is None else self.layer_types[layers.start : layers.stop])

    def streaming(self, window: int, sinks: int) -> ArchConfig:
        """Every layer attending to the last `window` tokens and the first `sinks` (StreamingLLM)."""
        if self.layer_types is not None:
            raise ValueError(f"{self.architecture} has sliding-window layers of its own: --sliding-window and "
                             "--attention-sinks apply to models whose layers all see the whole context")
        if sinks + window > self.max_position_embeddings:
            raise ValueError(f"the attention sinks and the window ({sinks} + {window} tokens) must fit in the "
                             f"model's context ({self.max_position_embeddings}): farther, it never saw a query")
        return replace(self, sliding_window=window, layer_types=("sliding_attention",) * self.num_layers,
                       attention_sinks=sinks, unbounded_context=True)

    def window(self, layer: int) -> int | None:
        """The tokens a layer attends to, counting its own; None: all of them."""
        if self.layer_types is None or self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], has_output_weight: bool) -> ArchConfig:
        arch = meta["general.architecture"]

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{key}", default)

        hidden = get("embedding_length")
        heads = get("attention.head_count")
        vocab = get("vocab_size") or len(meta["tokenizer.ggml.tokens"])
        return cls(
            **_gguf_sliding_window(arch, get("attention.sliding_window"), get("block_count"),
                                   get("attention.key_length", hidden // heads)),  # fmt: skip
            architecture=arch,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=get("feed_forward_length"),
            num_layers=get("block_count"),
            num_heads=heads,
            num_kv_heads=get("attention.head_count_kv", heads),
            head_dim=get("attention.key_length", hidden // heads),
            rms_norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta=get("rope.freq_base", 10000.0),
            max_position_embeddings=get("context_length", 4096),
            tie_word_embeddings=not has_output_weight,
            rope_scaling=_gguf_rope_scaling(get("rope.scaling.type"), get("rope.scaling.factor")),
        )

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ArchConfig:
        hidden = cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        by_layer_type = cfg.get("rope_parameters") or {}  # transformers 5 keys RoPE by layer type for Gemma 3
        full, local = by_layer_type.get("full_attention") or {}, by_layer_type.get("sliding_attention") or {}
        layer_types = cfg.get("layer_types")
        return cls(
            sliding_window=cfg.get("sliding_window") if layer_types else None,
            layer_types=tuple(layer_types) if layer_types else None,
            rope_local_theta=local.get("rope_theta") or cfg.get("rope_local_base_freq"),
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
            architecture=cfg.get("model_type", "llama"),
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta") or full.get("rope_theta") or by_layer_type.get("rope_theta", 10000.0),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            rope_scaling=_hf_rope_scaling(cfg),
            attention_bias=cfg.get("attention_bias", False),
        )


def _gguf_sliding_window(arch: str, window: int | None, num_layers: int, head_dim: int) -> dict[str, Any]:
    """What a GGUF leaves to the reader, as llama.cpp fills it in: Gemma 3's every sixth layer
    attends globally, its sliding layers' RoPE base is 10,000, and queries scale by head_dim."""
    if arch != "gemma3" or window is None:
        return {}
    layer_types = tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(num_layers))
    return {"sliding_window": window, "layer_types": layer_types, "rope_local_theta": 10000.0,
            "query_pre_attn_scalar": head_dim}


def _gguf_rope_scaling(kind: str | None, factor: float | None) -> dict[str, Any] | None:
    if kind in (None, "none") or not factor or factor == 1.0:
        return None
    return {"rope_type": kind, "factor": factor}


def _hf_rope_scaling(cfg: dict[str, Any]) -> dict[str, Any] | None:
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    return None if kind in (None, "default") else {**scaling, "rope_type": kind}
