"""The router's response caches and model cascade, measured over local `tokenmill serve` backends.

- exact cache: 16 distinct greedy chat requests (64 output tokens), each sent twice through a router
  with `--response-cache exact`, streamed and not. Figures: the latency of the first (a miss, the
  backend answers) and of the repeat (a hit), medians, and their ratio.
- semantic cache: the labelled paraphrase and near-miss pairs of tests/router/semantic_pairs.py;
  precision, recall and near misses served at several thresholds (the default is marked).
- cascade: 40 short questions with known answers; the small model is the default model as served
  (Q4_1 GGUF), the large one the same model in float32. Each model answers every question
  directly; a router with `--cascade small,large` answers them at the default threshold (its
  answers must equal what the two direct runs imply). Figures per threshold: the share escalated,
  the answers' accuracy (the known answer in the text) against always-large, agreement with
  always-large, and the large model's tokens saved.

    PYTHONPATH=. python benchmarks/router_cache.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.router.semantic_pairs import NEAR_MISSES, PARAPHRASES
from tokenmill.bench.local_server import LocalServer
from tokenmill.bench.report import load_average_note, print_figures
from tokenmill.kernels.cpu_info import cpu_features, cpu_model
from tokenmill.model.default import DEFAULT_MODEL_NAME
from tokenmill.router.cache.config import ResponseCacheConfig
from tokenmill.router.cache.keys import SemanticQuery
from tokenmill.router.cache.semantic import Embedder, SemanticIndex
from tokenmill.router.cascade import CascadeConfig, mean_logprob

SMALL = "smollm2-q4_1"
QUESTIONS = [  # (question, an answer that a right reply contains)
    ("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Japan?", "Tokyo"), ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Germany?", "Berlin"), ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"), ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of China?", "Beijing"), ("What is the capital of Canada?", "Ottawa"),
    ("What is 2 + 2?", "4"), ("What is 3 + 5?", "8"), ("What is 10 - 3?", "7"), ("What is 6 times 7?", "42"),
    ("What is 9 + 10?", "19"), ("What is 100 divided by 4?", "25"), ("What is 12 + 12?", "24"),
    ("How many days are in a week?", "7"), ("How many legs does a spider have?", "8"),
    ("How many continents are there?", "7"), ("How many hours are in a day?", "24"),
    ("How many months are in a year?", "12"), ("What color is the sky on a clear day?", "blue"),
    ("What color is grass?", "green"), ("What color are ripe bananas?", "yellow"),
    ("What is the largest planet in the solar system?", "Jupiter"), ("What planet do we live on?", "Earth"),
    ("What is the closest star to Earth?", "Sun"), ("What is frozen water called?", "ice"),
    ("What gas do plants take in from the air?", "carbon dioxide"), ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("Who painted the Mona Lisa?", "Leonardo"), ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the chemical symbol for gold?", "Au"), ("What is the chemical formula of water?", "H2O"),
    ("What is the freezing point of water in Celsius?", "0"), ("What animal is known as the king of the jungle?", "lion"),
    ("What is the opposite of hot?", "cold"), ("Which language is spoken in Brazil?", "Portuguese"),
    ("What is the tallest mountain in the world?", "Everest"),
]  # fmt: skip
THRESHOLDS = (-1.0, -0.75, -0.5, -0.35, -0.25, -0.15)
SEMANTIC_THRESHOLDS = (0.85, 0.88, 0.9, 0.92, 0.94, 0.96)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the exact cache's latencies")
    return parser.parse_args()


def chat(url: str, model: str, question: str, max_tokens: int, stream: bool = False) -> tuple[float, str, httpx.Headers]:
    """Seconds to the whole answer, its text and the response's headers."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}  # fmt: skip
    start = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        raw = response.read()
    seconds = time.perf_counter() - start
    if stream:
        return seconds, raw.decode(), response.headers
    return seconds, json.loads(raw)["choices"][0]["message"]["content"], response.headers


def exact_cache(backend: LocalServer, logs: Path, rounds: int) -> list[list[str]]:
    rows = []
    for stream in (False, True):
        misses, hits = [], []
        for round_ in range(rounds):
            router = LocalServer.launch_router([backend], logs / f"exact-{stream}-{round_}.log", "--response-cache", "exact")
            try:
                for i in range(16):
                    question = f"Round {round_}, item {i}: describe a mill in a few sentences."
                    miss, first, miss_headers = chat(router.url, SMALL, question, 64, stream)
                    hit, again, hit_headers = chat(router.url, SMALL, question, 64, stream)
                    assert (miss_headers["x-tokenmill-cache"], hit_headers["x-tokenmill-cache"]) == ("miss", "exact")
                    assert stream or again == first, "a cached answer differs"
                    misses.append(miss)
                    hits.append(hit)
            finally:
                router.stop()
        miss, hit = statistics.median(misses), statistics.median(hits)
        rows.append(["streamed" if stream else "not streamed", f"{1e3 * miss:.1f}", f"{1e3 * hit:.2f}",
                     f"{miss / hit:.0f}x"])  # fmt: skip
    return rows


def semantic_cache() -> list[list[str]]:
    embedder = Embedder()
    vectors = {q: asyncio.run(embedder.embed(q)) for pair in PARAPHRASES + NEAR_MISSES for q in pair}
    rows = []
    for threshold in SEMANTIC_THRESHOLDS:
        index = SemanticIndex(embedder, threshold, max_entries=1000)
        for first, _ in dict.fromkeys(PARAPHRASES + NEAR_MISSES):
            index.add(SemanticQuery(first, "rest"), vectors[first], first)

        def served(question: str) -> str | None:
            match = index.nearest(SemanticQuery(question, "rest"), vectors[question])
            return None if match is None else match.exact_key

        right = sum(served(second) == first for first, second in PARAPHRASES)
        wrong = sum(served(second) not in (None, first) for first, second in PARAPHRASES)
        near = sum(served(second) is not None for _, second in NEAR_MISSES)
        precision = right / (right + wrong + near) if right + wrong + near else 1.0
        default = " (default)" if threshold == ResponseCacheConfig().semantic_threshold else ""
        rows.append([f"{threshold:.2f}{default}", f"{precision:.2f}", f"{right / len(PARAPHRASES):.2f}",
                     f"{near} of {len(NEAR_MISSES)}"])  # fmt: skip
    return rows


def ask_directly(url: str, model: str) -> list[dict]:
    answers = []
    for question, _ in QUESTIONS:
        body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 24,
                "temperature": 0, "logprobs": True}  # fmt: skip
        start = time.perf_counter()
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
        answer["seconds"] = time.perf_counter() - start
        answers.append(answer)
    return answers


def cascade(small: LocalServer, large: LocalServer, logs: Path) -> tuple[list[list[str]], str]:
    small_answers, large_answers = ask_directly(small.url, SMALL), ask_directly(large.url, DEFAULT_MODEL_NAME)
    text = lambda answer: answer["choices"][0]["message"]["content"]  # noqa: E731
    right = lambda answer, expected: expected.lower() in text(answer).lower()  # noqa: E731
    tokens = lambda answer: answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]  # noqa: E731
    rows = [["always small", "0%", _share(small_answers, right), _agreement(small_answers, large_answers, text), "",
             f"{1e3 * statistics.mean(a['seconds'] for a in small_answers):.0f}"]]  # fmt: skip
    default = CascadeConfig(SMALL, DEFAULT_MODEL_NAME).min_mean_logprob
    for threshold in sorted({*THRESHOLDS, default}):
        chosen = [s if confidence(s) >= threshold else g for s, g in zip(small_answers, large_answers, strict=True)]
        escalated = sum(c is g for c, g in zip(chosen, large_answers, strict=True))
        saved = sum(tokens(g) for c, g in zip(chosen, large_answers, strict=True) if c is not g)
        saved /= sum(tokens(g) for g in large_answers)
        seconds = [s["seconds"] + (g["seconds"] if c is g else 0)
                   for s, g, c in zip(small_answers, large_answers, chosen, strict=True)]  # fmt: skip
        mark = " (default)" if threshold == default else ""
        rows.append([f"cascade at {threshold}{mark}", f"{escalated / len(QUESTIONS):.0%}", _share(chosen, right),
                     _agreement(chosen, large_answers, text), f"{saved:.0%}", f"{1e3 * statistics.mean(seconds):.0f}"])
    rows.append(["always large", "100%", _share(large_answers, right), "100%", "0%",
                 f"{1e3 * statistics.mean(a['seconds'] for a in large_answers):.0f}"])  # fmt: skip
    router = LocalServer.launch_router([small, large], logs / "cascade.log", "--cascade", f"{SMALL},{DEFAULT_MODEL_NAME}")
    agreed, escalated = 0, 0
    try:  # the router's own cascade, against what the direct answers imply at its threshold
        for (question, _), s, g in zip(QUESTIONS, small_answers, large_answers, strict=True):
            _, answer, headers = chat(router.url, "cascade", question, 24)
            expected = s if confidence(s) >= default else g
            escalated += headers["x-tokenmill-cascade"] == "large"
            agreed += answer == text(expected) and headers["x-tokenmill-cascade"] == ("small" if expected is s else "large")
        check = (f"the router's cascade at {default}: {escalated} of {len(QUESTIONS)} escalated; {agreed} of "
                 f"{len(QUESTIONS)} answers as the direct runs imply")  # fmt: skip
    finally:
        router.stop()
    return rows, check


def confidence(answer: dict) -> float:
    mean = mean_logprob(answer)
    return float("-inf") if mean is None else mean


def _share(answers: list[dict], right) -> str:
    return f"{sum(right(a, expected) for a, (_, expected) in zip(answers, QUESTIONS, strict=True)) / len(answers):.0%}"


def _agreement(answers: list[dict], large: list[dict], text) -> str:
    return f"{sum(text(a) == text(g) for a, g in zip(answers, large, strict=True)) / len(answers):.0%}"


def main() -> None:
    args = parse_args()
    logs = Path(tempfile.mkdtemp(prefix="tokenmill-router-cache-"))
    load_before = os.getloadavg()[0]
    small = LocalServer.launch(["--served-model-name", SMALL], logs / "small.log")
    large = LocalServer.launch(["--dtype", "float32", "--quantization", "none"], logs / "large.log")
    try:
        small.wait_ready()
        large.wait_ready()
        exact_rows = exact_cache(small, logs, args.rounds)
        cascade_rows, check = cascade(small, large, logs)
    finally:
        small.stop()
        large.stop()
    semantic_rows = semantic_cache()
    print(f"{datetime.date.today()}, {cpu_model()} ({', '.join(cpu_features())}), {os.cpu_count()} cores; "
          "SmolLM2-135M-Instruct behind tokenmill router")
    print("\nExact cache: latency of a deterministic chat request (64 tokens), first (miss) and repeated (hit)")
    print_figures(["request", "miss (ms)", "hit (ms)", "hit is faster by"], exact_rows, {})
    print("\nSemantic cache on the labelled pairs (20 paraphrase pairs, 20 near misses)")
    print_figures(["threshold", "precision", "recall", "near misses served"], semantic_rows, {})
    print(f"\nCascade: {SMALL} (the default mode, Q4_1) then float32, on {len(QUESTIONS)} questions")
    print_figures(["answered by", "escalated", "right answers", "same as always-large", "large tokens saved",
                   "mean latency (ms)"], cascade_rows, {}, [check, load_average_note(load_before)])  # fmt: skip


if __name__ == "__main__":
    main()
