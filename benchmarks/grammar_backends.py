"""The two grammar backends on the same JSON schemas: llguidance (tokenmill's) and xgrammar.

The corpus is the test suite's (tests/structured/schemas.py): 50 schemas llguidance accepts and 8
it refuses. For each backend: how many of the 58 it compiles, the time to compile each (a fresh
compiler, no cache) and to build its matcher, and the time of each mask along real outputs: the
token sequences tokenmill's engine generated under each accepted schema (greedy, the default
model), which both backends then follow token by token (a backend that refuses a token of a
valid output is counted). One mask is one sequence's next-token bitmask over the vocabulary.

    PYTHONPATH=. python benchmarks/grammar_backends.py   (the corpus is under tests/)
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time

import llguidance
import torch
import transformers
import xgrammar

from tests.structured.schemas import ACCEPTED, REFUSED
from tokenmill import LLM, SamplingParams
from tokenmill.bench.report import command_line, markdown_table
from tokenmill.bench.stats import percentile
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.structured.grammar import bounded_whitespace
from tokenmill.structured.params import StructuredOutputsParams


def outputs(llm: LLM) -> dict[str, list[int]]:
    names = list(ACCEPTED)
    conversations = [[{"role": "user", "content": f"{ACCEPTED[n][0]} Answer in JSON."}] for n in names]
    params = [SamplingParams(max_tokens=400, temperature=0, structured_outputs=StructuredOutputsParams(json=ACCEPTED[n][1]))
              for n in names]  # fmt: skip
    return {n: o.outputs[0].token_ids for n, o in zip(names, llm.chat(conversations, params, use_tqdm=False))}


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self.tokenizer = llguidance.LLTokenizer(tokenizer.to_json(), n_vocab=vocab_size,
                                                eos_token=tokenizer.eos_token_id)
        self.words = (vocab_size + 31) // 32
        self.bitmask = torch.empty(self.words, dtype=torch.int32)

    def matcher(self, schema: dict):
        grammar = llguidance.grammar_from("json", json.dumps(bounded_whitespace(schema)))
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise ValueError(error)
        return llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)

    def mask(self, matcher) -> None:
        matcher.unsafe_compute_mask_ptr(self.bitmask.data_ptr(), self.words * 4)

    def accept(self, matcher, token_id: int) -> bool:
        return matcher.consume_token(token_id)


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer._backend)
        self.info = xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size,
                                                            stop_token_ids=[tokenizer.eos_token_id])
        self.bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)

    def matcher(self, schema: dict):
        compiler = xgrammar.GrammarCompiler(self.info, cache_enabled=False)
        return xgrammar.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema)))

    def mask(self, matcher) -> None:
        matcher.fill_next_token_bitmask(self.bitmask)

    def accept(self, matcher, token_id: int) -> bool:
        return matcher.accept_token(token_id)


def measure(backend, paths: dict[str, list[int]]) -> dict:
    compiled, compile_ms, mask_ms, refused_paths = 0, [], [], []
    for name, schema in [*((n, s) for n, (_, s) in ACCEPTED.items()), *((n, s) for n, (s, _) in REFUSED.items())]:
        start = time.perf_counter()
        try:
            matcher = backend.matcher(schema)
        except Exception:  # noqa: BLE001 - any refusal counts as not compiled
            continue
        compile_ms.append(1000 * (time.perf_counter() - start))
        compiled += 1
        for token_id in paths.get(name, []):
            start = time.perf_counter()
            backend.mask(matcher)
            mask_ms.append(1000 * (time.perf_counter() - start))
            if not backend.accept(matcher, token_id):
                refused_paths.append(name)
                break
    return dict(compiled=compiled, compile_ms=compile_ms, mask_ms=mask_ms, refused_paths=refused_paths)


def main() -> None:
    llm = LLM()
    paths = outputs(llm)
    tokenizer, vocab = llm.tokenizer, llm.engine.arch.vocab_size
    rows, notes = [], []
    for backend in (Llguidance(tokenizer, vocab), Xgrammar(tokenizer, vocab)):
        measure(backend, {})  # warm: first-call costs out of the figures
        m = measure(backend, paths)
        rows.append([backend.name, f"{m['compiled']}/{len(ACCEPTED) + len(REFUSED)}",
                     f"{statistics.median(m['compile_ms']):.2f} / {max(m['compile_ms']):.1f}",
                     f"{statistics.median(m['mask_ms']):.3f} / {percentile(m['mask_ms'], 99):.2f}",
                     f"{statistics.fmean(m['mask_ms']):.3f}", f"{len(paths) - len(m['refused_paths'])}/{len(paths)}"])
        if m["refused_paths"]:
            notes.append(f"{backend.name} refused a token of valid outputs for: {', '.join(m['refused_paths'])}")
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          f"{sum(len(p) for p in paths.values())} masks along {len(paths)} outputs; vocabulary {vocab}")
    print("\n".join(markdown_table(["backend", "schemas compiled", "compile + matcher ms p50 / max",
                                    "mask ms p50 / p99", "mask ms mean", "outputs followed"], rows)))
    for note in notes:
        print(note)
    print(command_line())


if __name__ == "__main__":
    main()
