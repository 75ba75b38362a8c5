"""ModelRunner: a SchedulerOutput in, a RunnerOutput out. Owns the model, the KV pool, its own
copy of the scheduled sequences (runner/input_batch.py), the sampler and the speculator."""

from __future__ import annotations

import itertools
import logging
import resource
import time

import torch

from tokenmill.attention.base import plan_step
from tokenmill.config import CacheConfig, LoRAConfig, ModelConfig, SpeculativeConfig
from tokenmill.engine.messages import GrammarBitmask, RunnerOutput, SchedulerOutput, SpecDecodeCounts
from tokenmill.engine.stats import RankStats
from tokenmill.lora.manager import LoRAManager
from tokenmill.model.loader import LoadedModel
from tokenmill.outputs import Logprob
from tokenmill.runner.batch import ModelInput, prepare_input
from tokenmill.runner.cuda_graphs import CudaDecodeGraphs
from tokenmill.runner.host_memory import keep_activations_on_heap, return_freed_memory
from tokenmill.runner.input_batch import InputBatch, RunnerSequence
from tokenmill.runner.kv_cache import kv_layout, kv_storage_dtype, size_kv_cache
from tokenmill.runner.paged_model import PagedModel
from tokenmill.runner.sampler import Sampler
from tokenmill.runner.step_graph import DecodeGraphs
from tokenmill.speculative.speculator import ProposalInput, Speculator
from tokenmill.speculative.verify import accept_greedy, accept_sampled

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, model_config: ModelConfig, cache_config: CacheConfig,
                 lora_config: LoRAConfig | None = None, num_blocks: int | None = None) -> None:  # fmt: skip
        """num_blocks: the pool's size when another rank chose it; None sizes it from the budget."""
        self.model = loaded.model
        self.arch = loaded.arch
        self.tp_size, self.pp = loaded.tp_size, loaded.pp
        self.model_config = model_config
        self.device, self.dtype = model_config.device, model_config.activation_dtype
        self.block_size = cache_config.block_size
        if self.device.type == "cpu":
            return_freed_memory()
            keep_activations_on_heap()
        start = time.monotonic()
        kv_dtype = kv_storage_dtype(cache_config.kv_cache_dtype, self.dtype)
        self.kv_layout = kv_layout(self.arch, cache_config)
        self.kv_size = size_kv_cache(self.arch, cache_config, kv_dtype, self.device, num_blocks,
                                     self.kv_layout.num_slots)  # fmt: skip
        self.paged = PagedModel.build(loaded, model_config, self.kv_size.num_blocks, self.block_size, kv_dtype,
                                      self.kv_layout)  # fmt: skip
        self.num_blocks, self.attention = self.paged.num_blocks, self.paged.attention
        logger.info("allocated the %s KV cache in %.2f s; attention backend: %s", kv_dtype, time.monotonic() - start,
                    self.attention.name)
        self.sampler = Sampler(model_config.seed, self.device, loaded.tokenizer.eos_token_ids)
        self.lora = None if lora_config is None else LoRAManager(self.model, lora_config, self.device, self.dtype)
        self.input_batch = InputBatch(self.device, self.lora)
        self.speculator: Speculator | None = None
        self.decode_graphs: DecodeGraphs | CudaDecodeGraphs | None = None
        self.num_steps = 0

    def enable_speculation(self, config: SpeculativeConfig, max_model_len: int) -> None:
        """Builds the proposer (which may load a draft model) once the engine knows its context limit;
        on the last pipeline stage only, which verifies and proposes."""
        if not self.pp.is_last:
            return
        from tokenmill.speculative.proposers import make_proposer

        self.speculator = Speculator(config, max_model_len, make_proposer(config, self.paged, self.model_config))

    def enable_decode_graphs(self, max_model_len: int, max_num_seqs: int) -> None:
        """Captures decode steps and replays them: on the CPU where every kernel is a C one
        (runner/step_graph.py), on CUDA as CUDA graphs where the attention plan is the Triton
        backend's, built on the device (runner/cuda_graphs.py). Not split over ranks: all-reduces
        and sends are no recorded kernels, so those steps run eagerly."""
        if self.tp_size > 1 or self.pp.num_stages > 1:
            logger.info("tensor or pipeline parallelism: decode steps run eagerly (no capture)")
        elif self.device.type == "cpu" and self.attention.name == "cpu":
            self.decode_graphs = DecodeGraphs(self.model, self.attention, max_model_len, self.block_size)
        elif self.device.type == "cuda" and self.attention.name == "triton":
            self.decode_graphs = CudaDecodeGraphs(self.model, self.attention, max_model_len, self.block_size,
                                                  self.paged.scratch_block, max_num_seqs, self.device)

    @property
    def max_captured_batch_size(self) -> int:
        """The most sequences a captured decode step takes (0: every step is eager)."""
        return 0 if self.decode_graphs is None else self.decode_graphs.max_batch_size

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> RunnerOutput | None:
        """The step's output; None on a pipeline stage before the last, which sends its layers'
        output on to the next stage instead."""
        self.num_steps += 1
        batch = prepare_input(self.input_batch.apply(sched), self.block_size, self.device,
                              self.kv_layout.group_windows, self.arch.attention_sinks)  # fmt: skip
        if self.lora is not None:
            self.lora.set_step(batch.lora_slots)
        if not self.pp.is_last:
            self.pp.send_next(self._stage_forward(batch))
            return None
        logits, rows, prompt_logprobs, hidden_states = self._forward(batch)
        if logits is None:
            return RunnerOutput(prompt_logprobs=prompt_logprobs, hidden_states=hidden_states)
        if len(logits) == len(batch.sampled_seqs):  # no proposals this step
            sampled = self.sampler(logits, batch.sampled_seqs, sched.grammar_bitmask)
            token_ids, logprobs = [[t] for t in sampled.token_ids], sampled.logprobs
        else:
            token_ids, logprobs = self._verify(logits, batch.sampled_seqs, batch.num_logits, sched.grammar_bitmask)
        seqs = batch.sampled_seqs
        counts, proposals = self._speculate(seqs, token_ids, rows, batch.num_logits)
        return RunnerOutput(
            sampled_token_ids={seq.seq_id: tokens for seq, tokens in zip(seqs, token_ids)},
            logprobs={seq.seq_id: lp for seq, lp in zip(seqs, logprobs) if lp is not None},
            spec_token_ids=proposals, spec_counts=counts,
            prompt_logprobs=prompt_logprobs, hidden_states=hidden_states,
        )  # fmt: skip

    def _forward(self, batch: ModelInput) -> tuple[torch.Tensor | None, torch.Tensor | None, dict, dict]:
        """The logits of the rows to sample or verify (None if none) and their hidden states, and
        the prompt rows asked for."""
        if self.decode_graphs is not None and self.decode_graphs.can_run(batch):
            return *self.decode_graphs.run(batch), {}, {}
        hidden = self._stage_forward(batch)
        prompt_logprobs, hidden_states = self._prompt_rows(hidden, batch)
        if not batch.sampled_seqs:
            return None, None, prompt_logprobs, hidden_states
        rows = hidden.index_select(0, batch.logits_indices)
        return self.model.compute_logits(rows), rows, prompt_logprobs, hidden_states

    def rank_stats(self) -> RankStats:
        tp = self.model.tp
        comm = tp.stats
        return RankStats(self.pp.stage * tp.size + tp.rank, self.pp.stage, self.num_steps, comm.calls, comm.bytes,
                         comm.seconds, self.pp.stats.bytes,
                         resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip

    def _stage_forward(self, batch: ModelInput) -> torch.Tensor:
        """This stage's layers over the batch: from the tokens on the first (or only) stage, from the
        previous stage's output on the others."""
        intermediate = None
        if not self.pp.is_first:
            shape = (2, len(batch.input_ids), self.arch.hidden_size)
            intermediate = self.pp.recv_prev(shape, self.dtype, self.device)
        plan = plan_step(self.attention, batch.attn_groups)
        return self.model(batch.input_ids, batch.positions, plan, intermediate=intermediate)

    def _speculate(self, seqs: list[RunnerSequence], token_ids: list[list[int]], rows: torch.Tensor | None,
                   num_logits: list[int]) -> tuple[SpecDecodeCounts, dict[int, list[int]]]:
        """Verification's tally, and proposals for the next step from the tokens just produced."""
        speculator = self.speculator
        if speculator is None:
            return SpecDecodeCounts(), {}
        counts = speculator.record(seqs, token_ids)
        if not speculator.is_active(len(seqs)):
            return counts, {}
        last = rows[_last_rows(num_logits, token_ids)] if speculator.needs_hidden else None
        inputs = [ProposalInput(seq, tokens, None if last is None else last[i])
                  for i, (seq, tokens) in enumerate(zip(seqs, token_ids))]
        return counts, speculator.propose(inputs)

    def _prompt_rows(self, hidden: torch.Tensor, batch: ModelInput) -> tuple[dict, dict]:
        """For sequences that asked: this chunk's next-token log-probabilities and hidden states."""
        logprobs, states = {}, {}
        for seq_id, (first, count) in batch.prompt_rows.items():
            rows = hidden[first : first + count]
            states[seq_id] = rows.float().clone()
            logprobs[seq_id] = torch.log_softmax(self.model.compute_logits(rows), dim=-1)
        return logprobs, states

    def _verify(self, logits: torch.Tensor, seqs: list[RunnerSequence], num_logits: list[int],
                grammar_bitmask: GrammarBitmask | None) -> tuple[list[list[int]], list[dict[int, Logprob] | None]]:
        """Sequences with proposals verify them over their rows (greedy, or by rejection sampling);
        the others sample their one row."""
        ends = list(itertools.accumulate(num_logits))
        plain = [i for i, n in enumerate(num_logits) if n == 1]
        sampled = self.sampler(logits[[ends[i] - 1 for i in plain]], [seqs[i] for i in plain], grammar_bitmask)
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
        return token_ids, logprobs


def _last_rows(num_logits: list[int], token_ids: list[list[int]]) -> list[int]:
    """Each sequence's row (among the logits rows) that produced its last token: a proposal's row
    checks the token after it, so with a accepted it is the (a + 1)-th of the sequence's rows."""
    starts = itertools.accumulate(num_logits[:-1], initial=0)
    return [start + len(tokens) - 1 for start, tokens in zip(starts, token_ids)]
