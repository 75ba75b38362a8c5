"""ModelRunner: a scheduled step in, sampled tokens out. Owns the model and the KV pool."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import torch

from tokenmill.config import CacheConfig, ModelConfig
from tokenmill.engine.scheduler import SchedulerOutput
from tokenmill.engine.sequence import Sequence
from tokenmill.kernels.fused_ops import FusedOps
from tokenmill.attention.base import kv_block_views
from tokenmill.attention.selector import select_attention_backend
from tokenmill.model.layers import bind_fused_ops
from tokenmill.model.loader import LoadedModel
from tokenmill.outputs import Logprob
from tokenmill.runner.batch import prepare_input
from tokenmill.runner.host_memory import keep_activations_on_heap, return_freed_memory
from tokenmill.runner.kv_cache import allocate_kv_cache, kv_storage_dtype, size_kv_cache
from tokenmill.runner.sampler import Sampler
from tokenmill.speculative.verify import accept_greedy, accept_sampled

logger = logging.getLogger(__name__)


@dataclass
class RunnerOutput:
    seqs: list[Sequence]  # the sequences that produced tokens this step
    token_ids: list[list[int]]  # one each, or with speculation the accepted proposals and one more
    logprobs: list[dict[int, Logprob] | None]  # for the first token (speculation asks for none)
    hidden: torch.Tensor | None = None  # [S, H]: the final hidden state that gave each one's last token


class ModelRunner:
    def __init__(self, loaded: LoadedModel, model_config: ModelConfig, cache_config: CacheConfig,
                 keep_hidden: bool = False) -> None:
        self.model = loaded.model
        self.arch = loaded.arch
        self.device, self.dtype = model_config.device, model_config.dtype
        self.keep_hidden = keep_hidden  # for proposers that read the hidden states (draft heads)
        self.block_size = cache_config.block_size
        if self.device.type == "cpu":
            return_freed_memory()
            keep_activations_on_heap()
        start = time.monotonic()
        kv_dtype = kv_storage_dtype(cache_config.kv_cache_dtype, model_config.dtype)
        self.kv_size = size = size_kv_cache(self.arch, cache_config, kv_dtype, self.device)
        self.num_blocks = size.num_blocks
        self.kv_cache, self.kv_scales = allocate_kv_cache(self.arch, self.num_blocks, self.block_size, kv_dtype,
                                                          self.device)
        self._bind_kv_cache()
        logger.info("allocated the %s KV cache in %.2f s", kv_dtype, time.monotonic() - start)
        self.attention = select_attention_backend(
            model_config.attention_backend, self.device, model_config.dtype, self.arch.num_queries_per_kv
        )
        logger.info("attention backend: %s", self.attention.name)
        self._bind_fused_ops()
        self.sampler = Sampler(model_config.seed, self.device, loaded.tokenizer.eos_token_id)

    def _bind_kv_cache(self) -> None:
        """Gives each attention layer its views of the pool (and, for int8, of the scales)."""
        for layer, attn in enumerate(self.model.attention_layers()):
            scales = None if self.kv_scales is None else self.kv_scales[layer]
            attn.kv = kv_block_views(self.kv_cache[layer], scales, self.block_size, attn.num_kv_heads, attn.head_dim)

    def _bind_fused_ops(self) -> None:
        """The C elementwise kernels go with the C attention kernel: float32 on the CPU."""
        if self.attention.name != "cpu":
            return
        ops = FusedOps.load()
        if ops is not None:
            logger.info("fused C kernels bound to %d layers", bind_fused_ops(self.model, ops))

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput:
        batch = prepare_input(sched, self.block_size, self.device)
        hidden = self.model(batch.input_ids, batch.positions, self.attention.plan(batch.attn))
        if not batch.sampled_seqs:
            return RunnerOutput([], [], [])
        rows = hidden.index_select(0, batch.logits_indices)
        logits = self.model.compute_logits(rows)
        if len(logits) == len(batch.sampled_seqs):  # no proposals this step
            sampled = self.sampler(logits, batch.sampled_seqs)
            out = RunnerOutput(batch.sampled_seqs, [[t] for t in sampled.token_ids], sampled.logprobs)
        else:
            out = self._verify(logits, batch.sampled_seqs, batch.num_logits)
        if self.keep_hidden:
            out.hidden = rows[_last_rows(batch.num_logits, out.token_ids)]
        return out

    def _verify(self, logits: torch.Tensor, seqs: list[Sequence], num_logits: list[int]) -> RunnerOutput:
        """Sequences with proposals verify them over their rows (greedy, or by rejection sampling);
        the others sample their one row."""
        ends = list(itertools.accumulate(num_logits))
        plain = [i for i, n in enumerate(num_logits) if n == 1]
        sampled = self.sampler(logits[[ends[i] - 1 for i in plain]], [seqs[i] for i in plain])
        token_ids: list[list[int]] = [[] for _ in seqs]
        logprobs: list[dict[int, Logprob] | None] = [None] * len(seqs)
        for row, i in enumerate(plain):
            token_ids[i], logprobs[i] = [sampled.token_ids[row]], sampled.logprobs[row]
        proposed = [i for i, n in enumerate(num_logits) if n > 1]
        targets = logits.argmax(-1).tolist()
        for i in (i for i in proposed if seqs[i].params.is_greedy):
            token_ids[i] = accept_greedy(targets[ends[i] - num_logits[i] : ends[i]], seqs[i].spec_token_ids)
        stochastic = [i for i in proposed if not seqs[i].params.is_greedy]
        rows = [r for i in stochastic for r in range(ends[i] - num_logits[i], ends[i])]
        probs = self.sampler.distribution(logits[rows], [seqs[i] for i in stochastic for _ in range(num_logits[i])])
        for i, seq_probs in zip(stochastic, probs.split([num_logits[i] for i in stochastic])):
            token_ids[i] = accept_sampled(seq_probs, seqs[i].spec_token_ids, self.sampler.generator_for(seqs[i]))
        return RunnerOutput(seqs, token_ids, logprobs)


def _last_rows(num_logits: list[int], token_ids: list[list[int]]) -> list[int]:
    """Each sequence's row (among the logits rows) that produced its last token: a proposal's row
    checks the token after it, so with a accepted it is the (a + 1)-th of the sequence's rows."""
    starts = itertools.accumulate(num_logits[:-1], initial=0)
    return [start + len(tokens) - 1 for start, tokens in zip(starts, token_ids)]
