"""The grammar backend, llguidance: a request's constraint compiled once per distinct constraint
(cached), and a matcher per sequence that gives the bitmask of tokens allowed next and advances on
each token sampled.

llguidance rather than xgrammar (measured side by side on the test suite's 58-schema corpus:
benchmarks/grammar_backends.py, docs/BENCHMARKS.md):
- it refuses what it cannot enforce. xgrammar compiled 57 of the 58, uniqueItems, if/then, not,
  contains, propertyNames, dependentRequired and a remote $ref among them, and then let `[1, 1]` through under
  uniqueItems: a client would get output that breaks its schema, where llguidance's 400 says why;
- it compiles in 0.6 ms a schema (p50, 1.4 ms the slowest) against xgrammar's 6 ms (18 ms), and
  builds its token trie straight from the model's tokenizers JSON, with no transformers object;
- xgrammar's masks are faster (0.005 ms mean against 0.036 ms), but at 16 constrained rows that
  is 0.1 against 0.6 ms of a decode step near 90 ms on this machine.
Both write properties in the schema's order. llguidance also takes regexes, choices and
Lark/GBNF grammars through one entry point. Compiling still runs off the step loop
(structured/manager.py): a large schema and the tokenizer trie (a fifth of a second) cost more.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import llguidance
import torch

from tokenmill.model.tokenizer import Tokenizer
from tokenmill.structured.params import StructuredOutputsError, StructuredOutputsParams


# JSON may be pretty-printed, but between two of its tokens at most this much whitespace: without
# a bound a small model can emit newlines until max_tokens and never close the object.
JSON_WHITESPACE = r"[\n\r\t ]{0,40}"


def bounded_whitespace(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with llguidance's whitespace option set to JSON_WHITESPACE, unless it sets its own."""
    return schema if "x-guidance" in schema else {**schema, "x-guidance": {"whitespace_pattern": JSON_WHITESPACE}}


class GrammarCompiler:
    """Turns constraints into llguidance grammars (validated, cached) and matchers."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        """vocab_size: the width of the model's logits, which the masks cover."""
        self.vocab_size = vocab_size
        self.compile_seconds = 0.0  # spent in grammar compilation and matcher building, since start
        self._tokenizer = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size,
                                                 eos_token=tokenizer.eos_token_id)
        self._grammar = functools.lru_cache(maxsize=256)(self._compile)

    def grammar(self, params: StructuredOutputsParams, param: str = "structured_outputs") -> str:
        """The constraint as an llguidance grammar; StructuredOutputsError (naming param) if the
        backend cannot use it."""
        grammar, error = self._grammar(params.key)
        if error:
            raise StructuredOutputsError(param, f"{param}: the grammar backend cannot use this constraint: {error}")
        return grammar

    def matcher(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        grammar = self.grammar(params)
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        self.compile_seconds += time.perf_counter() - start
        return matcher

    def _compile(self, key: tuple[str, str]) -> tuple[str, str]:
        start = time.perf_counter()
        kind, text = key
        try:
            if kind == "json":
                schema = json.loads(text)
                text = json.dumps(bounded_whitespace(schema) if isinstance(schema, dict) else schema)
            grammar = llguidance.grammar_from(kind, text)
            return grammar, llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        except ValueError as exc:
            return "", str(exc)
        finally:
            self.compile_seconds += time.perf_counter() - start


def compute_bitmask(matchers: list[llguidance.LLMatcher], vocab_size: int) -> torch.Tensor:
    """[len(matchers), ceil(vocab_size / 32)] int32: bit t of a row is set if its matcher allows token t next."""
    words = (vocab_size + 31) // 32
    bitmask = torch.empty(len(matchers), words, dtype=torch.int32)
    for row, matcher in enumerate(matchers):
        matcher.unsafe_compute_mask_ptr(bitmask[row].data_ptr(), words * 4)
    return bitmask


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[rows, vocab_size] bool from compute_bitmask's words."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32, device=bitmask.device)) & 1
    return bits.view(len(bitmask), -1)[:, :vocab_size].bool()
