"""The batched sampler: penalties, temperature, top-k/top-p/min-p, seeds and logprobs.

Every rule is a tensor operation over the whole batch; per-row Python work is limited to
reading each request's parameters and drawing noise for requests that carry their own seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tokenmill.outputs import Logprob
from tokenmill.runner.input_batch import RunnerSequence
from tokenmill.engine.messages import GrammarBitmask
from tokenmill.structured.grammar import unpack_bitmask


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob] | None]  # top-n and the sampled token, for rows that asked


class Sampler:
    def __init__(self, seed: int, device: torch.device, eos_token_ids: tuple[int, ...]) -> None:
        self.generator = torch.Generator(device).manual_seed(seed)
        self.eos_token_ids = eos_token_ids  # EOS and the end-of-turn tokens: they end a sequence
        self.grammar_mask_seconds = 0.0  # structured outputs: applying the engine's masks, since start

    def __call__(self, logits: torch.Tensor, seqs: list[RunnerSequence],
                 grammar_bitmask: GrammarBitmask | None = None) -> SamplerOutput:  # fmt: skip
        params = [s.params for s in seqs]
        logprobs = logits.log_softmax(-1) if any(p.logprobs is not None for p in params) else None
        logits = self._apply_penalties(logits, seqs)
        logits = self._add_token_biases(logits, seqs)
        if grammar_bitmask is not None:
            start = time.perf_counter()
            logits = _mask_by_grammar(logits, seqs, grammar_bitmask)
            self.grammar_mask_seconds += time.perf_counter() - start
        token_ids = self._sample(logits, seqs)
        return SamplerOutput(token_ids.tolist(), _gather_logprobs(logprobs, token_ids, seqs))

    def _sample(self, logits: torch.Tensor, seqs: list[RunnerSequence]) -> torch.Tensor:
        greedy = logits.argmax(-1)
        if all(s.params.is_greedy for s in seqs):
            return greedy
        probs = self.distribution(logits, seqs)
        # Sampling as argmax(p / E) with E ~ Exp(1): one batched draw, and per-row seeds are easy.
        sampled = (probs / self._exponential_noise(probs, seqs)).argmax(-1)
        is_greedy = torch.tensor([s.params.is_greedy for s in seqs], device=logits.device)
        return torch.where(is_greedy, greedy, sampled)

    def distribution(self, logits: torch.Tensor, seqs: list[RunnerSequence]) -> torch.Tensor:
        """What each row samples from: temperature, then top-k/top-p/min-p, as probabilities."""
        temperature = _column([s.params.temperature or 1.0 for s in seqs], logits)
        return _filter(logits / temperature, seqs).softmax(-1)

    def generator_for(self, seq: RunnerSequence) -> torch.Generator:
        """The request's own seeded generator, or the engine's."""
        return seq.generator if seq.generator is not None else self.generator

    def _exponential_noise(self, probs: torch.Tensor, seqs: list[RunnerSequence]) -> torch.Tensor:
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, seq in enumerate(seqs):
            if seq.generator is not None:  # the same seed samples the same whatever the batch
                noise[row].exponential_(generator=seq.generator)
        return noise

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[RunnerSequence]) -> torch.Tensor:
        params = [s.params for s in seqs]
        if all(p.repetition_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty for p in params):
            return logits
        vocab = logits.shape[-1]
        output_counts = _token_counts([s.output_token_ids for s in seqs], vocab, logits.device)
        seen = (output_counts + _token_counts([s.prompt_token_ids for s in seqs], vocab, logits.device)) > 0
        rep = _column([p.repetition_penalty for p in params], logits)
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, penalized, logits)
        logits = logits - _column([p.frequency_penalty for p in params], logits) * output_counts
        return logits - _column([p.presence_penalty for p in params], logits) * (output_counts > 0)

    def _add_token_biases(self, logits: torch.Tensor, seqs: list[RunnerSequence]) -> torch.Tensor:
        """Per-token additions, in one indexed add over the batch: each request's logit_bias, and
        below min_tokens -inf on the tokens that would stop the sequence (they cannot be sampled)."""
        rows, cols, values = [], [], []
        for row, seq in enumerate(seqs):
            bias = seq.params.logit_bias or {}
            stop_ids = []
            if seq.num_output_tokens < seq.params.min_tokens:
                stop_ids = list(seq.params.stop_token_ids or [])
                if not seq.params.ignore_eos:
                    stop_ids += self.eos_token_ids
            rows += [row] * (len(bias) + len(stop_ids))
            cols += [*bias, *stop_ids]
            values += [*bias.values(), *[float("-inf")] * len(stop_ids)]
        if not rows:
            return logits
        index = (torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device))
        return logits.index_put(index, torch.tensor(values, dtype=logits.dtype, device=logits.device), accumulate=True)


def _mask_by_grammar(logits: torch.Tensor, seqs: list[RunnerSequence], grammar_bitmask: GrammarBitmask) -> torch.Tensor:
    """Rows of constrained sequences keep only the tokens their grammar allows next."""
    row_of = {seq.seq_id: row for row, seq in enumerate(seqs)}
    masked = [(row_of[seq_id], i) for i, seq_id in enumerate(grammar_bitmask.seq_ids) if seq_id in row_of]
    if not masked:
        return logits
    rows, mask_rows = (list(column) for column in zip(*masked))
    bits = grammar_bitmask.bits[mask_rows].to(logits.device)
    allowed = unpack_bitmask(bits, logits.shape[-1])
    logits = logits.clone()
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return logits


def _filter(logits: torch.Tensor, seqs: list[RunnerSequence]) -> torch.Tensor:
    """Top-k, then top-p, then min-p, on one descending sort of each row."""
    params = [s.params for s in seqs]
    if all(p.top_k <= 0 and p.top_p >= 1.0 and p.min_p <= 0.0 for p in params):
        return logits
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    top_k = _column([p.top_k if p.top_k > 0 else vocab for p in params], logits)
    drop = ranks >= top_k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    drop |= (probs.cumsum(-1) - probs) > _column([p.top_p for p in params], logits)
    drop |= probs < _column([p.min_p for p in params], logits) * probs[:, :1]
    drop[:, 0] = False  # the most likely token always survives
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))


def _gather_logprobs(
    logprobs: torch.Tensor | None, token_ids: torch.Tensor, seqs: list[RunnerSequence]
) -> list[dict[int, Logprob] | None]:
    if logprobs is None:
        return [None] * len(seqs)
    max_n = max(s.params.logprobs or 0 for s in seqs)
    top_values, top_ids = logprobs.topk(max(max_n, 1), dim=-1)
    chosen = logprobs.gather(-1, token_ids[:, None])
    chosen_rank = (logprobs > chosen).sum(-1) + 1
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    out: list[dict[int, Logprob] | None] = []
    for row, seq in enumerate(seqs):
        n = seq.params.logprobs
        if n is None:
            out.append(None)
            continue
        entry = {tid: Logprob(val, rank + 1) for rank, (tid, val) in enumerate(zip(top_ids[row][:n], top_values[row][:n]))}
        entry[int(token_ids[row])] = Logprob(float(chosen[row]), int(chosen_rank[row]))
        out.append(entry)
    return out


def _token_counts(token_lists: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    width = max(1, max(len(t) for t in token_lists))
    padded = torch.tensor([t + [vocab] * (width - len(t)) for t in token_lists], device=device)
    counts = torch.zeros(len(token_lists), vocab + 1, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=counts.dtype))
    return counts[:, :vocab]


def _column(values: list[float] | list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]
