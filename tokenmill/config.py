"""Small frozen configs, one per concern, each validated where it is built."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

# torch is imported only where a dtype or device is built: the CLI reads these choices and defaults
# (and HTTP-only commands run) without loading it.
if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch's own names
DTYPE_CHOICES = ("auto", *_DTYPE_NAMES)
ATTENTION_BACKENDS = ("auto", "cpu", "torch", "triton")  # cpu: the C kernels; torch: plain PyTorch, any device;
# triton: the Triton kernel, on CUDA
# none: the weights in `dtype`; int8/int4: quantized at load time; gguf: a GGUF's own quantized tensors.
QUANTIZATIONS = ("none", "int8", "int4", "gguf")
QUANTIZATION_CHOICES = ("auto", *QUANTIZATIONS)  # auto: chosen per machine and model (tokenmill/auto_mode.py)
KV_CACHE_DTYPE_CHOICES = ("auto", "int8", "fp8")  # auto: the model's dtype (int8 where auto chose 4-bit weights)


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load and how to run it."""

    model: Path
    dtype: torch.dtype = field(default_factory=lambda: ModelConfig.parse_dtype("float32"))
    device: torch.device = field(default_factory=lambda: ModelConfig.parse_device("cpu"))
    max_model_len: int | None = None  # None: the model's context length, capped by the KV cache
    seed: int = 0
    attention_backend: str = "auto"  # one of ATTENTION_BACKENDS
    quantization: str = "none"  # one of QUANTIZATION_CHOICES
    quantization_group_size: int = 32  # int4: input channels that share one scale and offset
    enforce_eager: bool = False  # True: no captured decode steps (runner/step_graph.py), every step eager
    # Streaming (StreamingLLM): every layer attends to the last sliding_window tokens and to the
    # first attention_sinks; the KV between is freed, and the context has no limit.
    sliding_window: int | None = None
    attention_sinks: int = 0

    def __post_init__(self) -> None:
        import torch

        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 token, got {self.sliding_window}")
        if self.attention_sinks < 0 or (self.attention_sinks and self.sliding_window is None):
            raise ValueError("attention_sinks takes a count of tokens >= 0, with a sliding_window (the recent "
                             f"tokens kept beside them); got attention_sinks={self.attention_sinks}, "
                             f"sliding_window={self.sliding_window}")
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        group = self.quantization_group_size
        if group < 16 or group % 16:
            raise ValueError(f"quantization_group_size must be a positive multiple of 16, got {group}")
        if self.quantization != "none" and self.activation_dtype != torch.float32 and self.device.type != "cuda":
            raise ValueError(f"quantization {self.quantization!r} runs with float32 activations off CUDA; use dtype "
                             f"float32 (or auto), or bfloat16 on the CPU, not {self.dtype} on {self.device}")

    @property
    def activation_dtype(self) -> torch.dtype:
        """The residual stream's, the attention's and the KV cache's dtype. On the CPU, bfloat16 means
        bfloat16 matrix products of many rows around float32 activations (model/bf16_products.py):
        the CPU's attention and elementwise kernels are float32, and they are not where time goes."""
        import torch

        return torch.float32 if self.bf16_products else self.dtype

    @property
    def bf16_products(self) -> bool:
        import torch

        return self.device.type == "cpu" and self.dtype == torch.bfloat16

    @staticmethod
    def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
        import torch

        if isinstance(dtype, torch.dtype):
            return dtype
        if dtype not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}")
        return getattr(torch, dtype)

    @staticmethod
    def parse_device(device: str | torch.device) -> torch.device:
        import torch

        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: block size and the memory budget it is sized from."""

    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes; None: kv_cache_memory_fraction of available memory
    kv_cache_memory_fraction: float = 0.1
    enable_prefix_caching: bool = True  # reuse the KV of prompt prefixes seen before
    kv_cache_dtype: str = "auto"  # one of KV_CACHE_DTYPE_CHOICES
    # Sliding-window models keep their windowed layers' KV in block tables of their own and free
    # what falls behind the window (kv/layout.py); disabled: one table, windows masked, nothing freed.
    disable_hybrid_kv_cache_manager: bool = False

    def __post_init__(self) -> None:
        _check_choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPE_CHOICES)
        if self.kv_cache_dtype == "fp8":  # accepted as a name vLLM users pass, refused before any loading
            raise ValueError(
                "kv_cache_dtype 'fp8' is not supported: the CPU has no float8 arithmetic and tokenmill has no "
                "float8 KV path for GPUs; use kv_cache_dtype 'int8', which also stores one byte per element "
                "(with a float32 scale per token and KV head)"
            )
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be a positive number of bytes, got {self.kv_cache_memory}")
        if not 0 < self.kv_cache_memory_fraction <= 1:
            raise ValueError(f"kv_cache_memory_fraction must be in (0, 1], got {self.kv_cache_memory_fraction}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits: how many sequences and tokens one step may carry."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    # Slots kept past each sequence's scheduled tokens for proposers that write KV ahead (a draft
    # model's guesses): speculative decoding sets it, from EngineConfig.create.
    num_lookahead_tokens: int = 0
    max_loras: int = 0  # adapters the running sequences may use at once (the LoRA slots); 0: no adapters

    def __post_init__(self) -> None:
        if self.num_lookahead_tokens < 0:
            raise ValueError(f"num_lookahead_tokens must be >= 0, got {self.num_lookahead_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")


SPECULATIVE_METHODS = ("ngram", "draft", "heads", "ngram_heads")  # ngram_heads: prompt lookup, else heads


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding, as vLLM's speculative_config: a proposer guesses up to
    num_speculative_tokens tokens, and one forward pass of the model verifies them."""

    method: str  # one of SPECULATIVE_METHODS
    num_speculative_tokens: int = 3  # the most; fewer while the observed acceptance rate is low
    prompt_lookup_max: int = 3  # ngram: the longest suffix matched against the tokens so far
    prompt_lookup_min: int = 1  # ngram: the shortest
    draft_layers: int | None = None  # draft: a self-draft, the model's first draft_layers layers
    model: str | None = None  # draft: a smaller model's path; heads: a heads file (default: the shipped one)
    # No proposals while this many sequences decode: big batches already use the hardware.
    disable_by_batch_size: int = 4

    def __post_init__(self) -> None:
        _check_choice("speculative method", self.method, SPECULATIVE_METHODS)
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {self.prompt_lookup_min} "
                             f"and {self.prompt_lookup_max}")
        if self.method == "draft" and (self.draft_layers is None) == (self.model is None):
            raise ValueError("method 'draft' needs one of draft_layers (--draft-layers: a self-draft) or model "
                             "(a smaller model with the same vocabulary)")
        if self.draft_layers is not None and (self.method != "draft" or self.draft_layers < 1):
            raise ValueError(f"draft_layers goes with method 'draft' and is >= 1, got {self.draft_layers}")
        if self.model is not None and self.method == "ngram":
            raise ValueError("speculative_config 'model' names a draft model or a heads file: not for ngram")
        if self.disable_by_batch_size < 2:
            raise ValueError(f"disable_by_batch_size must be >= 2, got {self.disable_by_batch_size}")

    @property
    def num_lookahead_tokens(self) -> int:
        """KV slots a step keeps past its tokens: a draft model writes its guesses' KV there."""
        return self.num_speculative_tokens if self.method == "draft" else 0

    @property
    def uses_heads(self) -> bool:
        """Whether draft heads propose, which read the model's hidden states."""
        return self.method in ("heads", "ngram_heads")

    @classmethod
    def from_dict(cls, options: dict) -> SpeculativeConfig:
        """From `speculative_config={...}` (LLM) or `--speculative-config '{...}'` (serve)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown speculative_config keys {unknown}; known: {sorted(known)}")
        if "method" not in options:
            raise ValueError(f"speculative_config needs a method, one of {', '.join(SPECULATIVE_METHODS)}")
        return cls(**options)


@dataclass(frozen=True)
class DraftTrainingConfig:
    """`tokenmill train-draft`: how draft heads are trained (tokenmill.training.draft_heads)."""

    num_heads: int = 3
    num_prompts: int = 384
    workload: str = "chat"  # prompts from this bench workload, drawn with seed
    seed: int = 1000  # a different draw of prompts from the benchmarks' (seed 0)
    epochs: int = 4
    batch_size: int = 256
    learning_rate: float = 1e-3
    held_out: float = 0.1  # the share of conversations kept to measure the heads' accuracy


@dataclass(frozen=True)
class LoRATrainingConfig:
    """`tokenmill train-lora`: how an adapter is fine-tuned (tokenmill.training.lora)."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-3
    max_len: int = 128  # tokens per example: longer chat pairs are cut, plain text is windowed
    seed: int = 0


@dataclass(frozen=True)
class LoRAConfig:
    """Multi-LoRA: adapters applied per request (tokenmill/lora)."""

    max_loras: int = 4  # adapters resident in the layers at once
    max_lora_rank: int = 16
    # adapters kept in host memory, resident ones included (None: max_loras, as vLLM); the least
    # recently used of the others are dropped past it, and read from disk again when next used
    max_cpu_loras: int | None = None

    def __post_init__(self) -> None:
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError(f"max_loras and max_lora_rank must be >= 1, got {self.max_loras}, {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras})")

    @property
    def host_adapters(self) -> int:
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras


@dataclass(frozen=True)
class ParallelConfig:
    """Splitting the model over ranks (tokenmill/distributed): worker processes that meet at
    master_addr:master_port (0: a free port, one host only). Over several hosts, as torchrun: each
    host runs `tokenmill serve` with the same sizes and rendezvous and its own node_rank; node 0
    serves the API and holds rank 0, every host runs world_size / nnodes ranks."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    nnodes: int = 1
    node_rank: int = 0

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size and pipeline_parallel_size must be >= 1, got "
                             f"{self.tensor_parallel_size} and {self.pipeline_parallel_size}")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, nnodes), got node_rank {self.node_rank} of {self.nnodes}")
        if self.world_size % self.nnodes:
            raise ValueError(f"the {self.world_size} ranks do not split evenly over {self.nnodes} nodes")
        if self.nnodes > 1 and not self.master_port:
            raise ValueError("several nodes need a rendezvous: master_port (and master_addr, node 0's address)")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def local_ranks(self) -> range:
        """The ranks this node runs."""
        per_node = self.world_size // self.nnodes
        return range(self.node_rank * per_node, (self.node_rank + 1) * per_node)


KV_ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class KVTransferConfig:
    """Disaggregated prefill and decode (tokenmill/kv_transfer): a prefill instance hosts the
    rendezvous at kv_peer ("host:port"), the decode instance joins it. timeout_s: how long a
    prefill instance keeps a finished prompt's blocks for a pull."""

    kv_role: str | None = None  # None: an ordinary instance
    kv_peer: str = "127.0.0.1:14579"
    timeout_s: float = 60.0
    connect_timeout_s: float = 300.0  # the other instance loads its model meanwhile

    def __post_init__(self) -> None:
        if self.kv_role is not None and self.kv_role not in KV_ROLES:
            raise ValueError(f"kv_role must be one of {', '.join(KV_ROLES)}; got {self.kv_role!r}")
        host, _, port = self.kv_peer.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"kv_peer must be host:port, got {self.kv_peer!r}")


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is built from: what `LLM(...)` and `tokenmill serve` hand down."""

    model: ModelConfig
    cache: CacheConfig
    scheduler: SchedulerConfig
    speculative: SpeculativeConfig | None = None
    lora: LoRAConfig | None = None  # None: no adapters
    parallel: ParallelConfig = ParallelConfig()
    kv_transfer: KVTransferConfig = KVTransferConfig()

    def __post_init__(self) -> None:
        needed = 0 if self.speculative is None else self.speculative.num_lookahead_tokens
        if self.scheduler.num_lookahead_tokens < needed:
            raise ValueError(f"speculative method {self.speculative.method!r} writes {needed} tokens' KV ahead: "
                             f"the scheduler must keep num_lookahead_tokens >= {needed}")
        if self.parallel.pipeline_parallel_size > 1 and self.speculative is not None and self.speculative.method != "ngram":
            raise ValueError(f"with pipeline_parallel_size > 1 the last stage proposes alone: speculative method "
                             f"'ngram' only for now, not {self.speculative.method!r}")
        if self.kv_transfer.kv_role is not None and self.parallel.world_size > 1:
            raise ValueError("kv_role (disaggregated prefill/decode) runs on one rank for now, not with tensor or "
                             "pipeline parallelism")

    @classmethod
    def create(
        cls,
        model: str | Path | None = None,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        seed: int = ModelConfig.seed,
        block_size: int = CacheConfig.block_size,
        max_num_seqs: int = SchedulerConfig.max_num_seqs,
        max_num_batched_tokens: int = SchedulerConfig.max_num_batched_tokens,
        max_model_len: int | None = None,
        kv_cache_memory: int | None = None,
        kv_cache_memory_fraction: float = CacheConfig.kv_cache_memory_fraction,
        attention_backend: str = ModelConfig.attention_backend,
        enable_prefix_caching: bool = CacheConfig.enable_prefix_caching,
        kv_cache_dtype: str = CacheConfig.kv_cache_dtype,
        disable_hybrid_kv_cache_manager: bool = CacheConfig.disable_hybrid_kv_cache_manager,
        sliding_window: int | None = None,
        attention_sinks: int = 0,
        quantization: str | None = "auto",
        quantization_group_size: int = ModelConfig.quantization_group_size,
        speculative_config: dict | None = None,
        enforce_eager: bool = ModelConfig.enforce_eager,
        enable_lora: bool = False,
        max_loras: int = LoRAConfig.max_loras,
        max_lora_rank: int = LoRAConfig.max_lora_rank,
        max_cpu_loras: int | None = None,
        tensor_parallel_size: int = ParallelConfig.tensor_parallel_size,
        pipeline_parallel_size: int = ParallelConfig.pipeline_parallel_size,
        master_addr: str = ParallelConfig.master_addr,
        master_port: int = ParallelConfig.master_port,
        nnodes: int = ParallelConfig.nnodes,
        node_rank: int = ParallelConfig.node_rank,
        kv_role: str | None = KVTransferConfig.kv_role,
        kv_peer: str = KVTransferConfig.kv_peer,
    ) -> EngineConfig:
        """From vLLM's argument names; `model` None is the default model; each `auto` is chosen for
        this machine (tokenmill/auto_mode.py) and logged."""
        from tokenmill.auto_mode import choose_mode
        from tokenmill.model.default import default_model_path

        path = Path(model) if model is not None else default_model_path()
        parsed_device = ModelConfig.parse_device(device)
        _check_choice("quantization", quantization or "none", QUANTIZATION_CHOICES)
        mode = choose_mode(path, parsed_device, dtype, quantization or "none", kv_cache_dtype)
        for reason in mode.reasons:
            logger.info("auto: %s", reason)
        model_config = ModelConfig(
            model=path,
            dtype=ModelConfig.parse_dtype(mode.dtype),
            device=parsed_device,
            max_model_len=max_model_len,
            seed=seed,
            attention_backend=attention_backend,
            quantization=mode.quantization,
            quantization_group_size=quantization_group_size,
            enforce_eager=enforce_eager,
            sliding_window=sliding_window,
            attention_sinks=attention_sinks,
        )
        speculative = SpeculativeConfig.from_dict(speculative_config) if speculative_config else None
        return cls(
            model_config,
            CacheConfig(block_size, kv_cache_memory, kv_cache_memory_fraction, enable_prefix_caching,
                        mode.kv_cache_dtype, disable_hybrid_kv_cache_manager),
            SchedulerConfig(max_num_seqs, max_num_batched_tokens,
                            speculative.num_lookahead_tokens if speculative is not None else 0,
                            max_loras if enable_lora else 0),
            speculative,
            LoRAConfig(max_loras, max_lora_rank, max_cpu_loras) if enable_lora else None,
            ParallelConfig(tensor_parallel_size, pipeline_parallel_size, master_addr, master_port, nnodes, node_rank),
            KVTransferConfig(kv_role, kv_peer),
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
