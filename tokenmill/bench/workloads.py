"""Deterministic benchmark workloads cut from real English text (see data/README.md)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

CORPUS_PATH = Path(__file__).parent / "data" / "python_docs.txt"
PARAGRAPH_SEPARATOR = "\n\n"


class TextTokenizer(Protocol):
    """All a workload needs: tokenmill's Tokenizer and Hugging Face tokenizers both fit."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class WorkloadRequest:
    """One request. `prompt_token_ids` is what a benchmark sends; `prompt` is their decoding,
    which may re-tokenize a few tokens differently because the cut can fall inside a word."""

    prompt: str
    prompt_token_ids: list[int]
    output_len: int


@dataclass(frozen=True)
class TokenizedCorpus:
    token_ids: list[int]
    paragraph_starts: list[int]  # token offset where each paragraph begins


def tokenize_corpus(tokenizer: TextTokenizer, path: Path = CORPUS_PATH) -> TokenizedCorpus:
    # Paragraph by paragraph, so every passage can start exactly at a paragraph's first token.
    paragraphs = [p for p in path.read_text(encoding="utf-8").split(PARAGRAPH_SEPARATOR) if p.strip()]
    token_ids: list[int] = []
    starts: list[int] = []
    for paragraph in paragraphs:
        starts.append(len(token_ids))
        token_ids += tokenizer.encode(paragraph + PARAGRAPH_SEPARATOR, add_special_tokens=False)
    return TokenizedCorpus(token_ids, starts)


def offline_workload(
    tokenizer: TextTokenizer,
    num_requests: int = 64,
    min_input_len: int = 100,
    max_input_len: int = 600,
    output_len: int = 128,
    seed: int = 0,
    passage_offset: int = 0,
) -> list[WorkloadRequest]:
    """Prompts of uniformly random length in [min_input_len, max_input_len] tokens, each a
    contiguous passage starting at a different paragraph (so no two share a prefix until every
    paragraph has been used), the same for a given tokenizer and seed.

    The seed fixes an order of starting paragraphs and request i takes the one at
    passage_offset + i: workloads with one seed and disjoint ranges share no prefix, which keeps
    prefix caching from flattering a benchmark that runs several of them."""
    _check_lengths(num_requests, min_input_len, max_input_len, output_len)
    corpus = tokenize_corpus(tokenizer)
    if max_input_len > len(corpus.token_ids):
        raise ValueError(f"max_input_len {max_input_len} exceeds the corpus ({len(corpus.token_ids)} tokens)")
    rng = random.Random(seed)
    # The order is drawn before the lengths so that it does not depend on num_requests.
    starts = rng.sample(corpus.paragraph_starts, len(corpus.paragraph_starts))
    lengths = [rng.randint(min_input_len, max_input_len) for _ in range(num_requests)]
    first_tokens = [starts[(passage_offset + i) % len(starts)] for i in range(num_requests)]
    passages = [_passage(corpus.token_ids, start, n) for start, n in zip(first_tokens, lengths)]
    return [WorkloadRequest(tokenizer.decode(ids), ids, output_len) for ids in passages]


def spread_subset(requests: Sequence[WorkloadRequest], k: int) -> list[WorkloadRequest]:
    """k requests evenly spaced by prompt length, from the shortest to the longest."""
    by_length = sorted(requests, key=lambda r: len(r.prompt_token_ids))
    if k >= len(by_length):
        return by_length
    if k == 1:
        return [by_length[len(by_length) // 2]]
    return [by_length[round(i * (len(by_length) - 1) / (k - 1))] for i in range(k)]


def _passage(token_ids: list[int], start: int, length: int) -> list[int]:
    # The corpus is read as a ring: a passage running off the end continues from the beginning.
    end = start + length
    return token_ids[start:end] + token_ids[: max(0, end - len(token_ids))]


def _check_lengths(num_requests: int, min_input_len: int, max_input_len: int, output_len: int) -> None:
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not 1 <= min_input_len <= max_input_len:
        raise ValueError(f"need 1 <= min_input_len <= max_input_len, got {min_input_len}, {max_input_len}")
    if output_len < 1:
        raise ValueError(f"output_len must be >= 1, got {output_len}")
