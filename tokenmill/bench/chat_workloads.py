"""The named chat workloads of `tokenmill bench`, cut from the real text in data/.

Each is a list of chat requests (messages, an output length, optionally a response schema), the
same for a given tokenizer and seed, and saved as JSON lines so that one file can feed both
`bench serve` and `bench offline`. Lengths are in tokens of the given tokenizer; servers report
their own counts, which the results use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenmill.bench.workloads import CORPUS_PATH, TextTokenizer, tokenize_corpus

CODE_PATH = CORPUS_PATH.with_name("python_code.jsonl")


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    output_len: int
    response_format: dict | None = None


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    num_requests: int = 64
    input_len: tuple[int, int] | None = None  # None: the workload's own spread
    output_len: tuple[int, int] | None = None
    seed: int = 0


def build_workload(spec: WorkloadSpec, tokenizer: TextTokenizer) -> list[ChatRequest]:
    if spec.name not in WORKLOADS:
        raise ValueError(f"unknown workload {spec.name!r}; choose from {', '.join(WORKLOADS)}")
    if spec.num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {spec.num_requests}")
    default_in, default_out, build = WORKLOADS[spec.name]
    rng = random.Random(spec.seed)
    return build(tokenizer, rng, spec.num_requests, spec.input_len or default_in, spec.output_len or default_out)


def save_workload(requests: list[ChatRequest], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in requests), encoding="utf-8")


def load_workload(path: Path) -> list[ChatRequest]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [ChatRequest(**json.loads(line)) for line in lines]


# ---- the workloads ---------------------------------------------------------------------------------


class _Prose:
    """Passages of the prose corpus of a chosen token length, from random paragraph starts."""

    def __init__(self, tokenizer: TextTokenizer, rng: random.Random) -> None:
        self.tokenizer, self.rng = tokenizer, rng
        self.corpus = tokenize_corpus(tokenizer)

    def passage(self, length: int) -> str:
        ids = self.corpus.token_ids
        start = self.rng.choice(self.corpus.paragraph_starts)
        return self.tokenizer.decode((ids[start:] + ids)[:length])


def _code_snippets() -> list[str]:
    return [json.loads(line)["source"] for line in CODE_PATH.read_text(encoding="utf-8").splitlines() if line]


def _lengths(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(*bounds)


def _chat(tokenizer: TextTokenizer, rng: random.Random, n: int, inp: tuple[int, int], out: tuple[int, int]):
    """Mixed lengths: a question or an instruction about a passage of prose."""
    prose = _Prose(tokenizer, rng)
    asks = ["Summarize this passage in plain words.", "What is the main point of the following text?",
            "Explain this to a new Python programmer.", "Continue this text in the same style."]
    return [ChatRequest([{"role": "user", "content": f"{rng.choice(asks)}\n\n{prose.passage(_lengths(rng, inp))}"}],
                        _lengths(rng, out)) for _ in range(n)]


def _shared_prefix(tokenizer: TextTokenizer, rng: random.Random, n: int, inp: tuple[int, int], out: tuple[int, int]):
    """One long system prompt (the upper input length) shared by all; short questions after it."""
    prose = _Prose(tokenizer, rng)
    system = "You answer questions about Python using this reference:\n\n" + prose.passage(inp[1])
    return [ChatRequest([{"role": "system", "content": system},
                         {"role": "user", "content": f"Explain: {prose.passage(_lengths(rng, (10, 60)))}"}],
                        _lengths(rng, out)) for _ in range(n)]


def _long_context(tokenizer: TextTokenizer, rng: random.Random, n: int, inp: tuple[int, int], out: tuple[int, int]):
    """Prompts near the context limit of an 8k-token model."""
    prose = _Prose(tokenizer, rng)
    return [ChatRequest([{"role": "user", "content": "Answer from this document: what does it say about "
                          f"exceptions?\n\n{prose.passage(_lengths(rng, inp))}"}], _lengths(rng, out))
            for _ in range(n)]


def _repetitive(tokenizer: TextTokenizer, rng: random.Random, n: int, inp: tuple[int, int], out: tuple[int, int]):
    """Outputs that copy the input: code to return edited, prose to repeat. Output as long as the input."""
    snippets = _code_snippets()
    prose = _Prose(tokenizer, rng)
    requests = []
    for i in range(n):
        if i % 2 == 0:
            code = rng.choice(snippets)
            ask = "Rename every local variable to a longer, clearer name and return the whole function:"
            content, length = f"{ask}\n\n```python\n{code}\n```", len(tokenizer.encode(code))
        else:
            length = _lengths(rng, inp)
            content = f"Repeat this text exactly, fixing only spelling:\n\n{prose.passage(length)}"
        requests.append(ChatRequest([{"role": "user", "content": content}], min(max(length, out[0]), out[1])))
    return requests


JSON_TASKS_PATH = CORPUS_PATH.with_name("json_tasks.json")


def _json(tokenizer: TextTokenizer, rng: random.Random, n: int, inp: tuple[int, int], out: tuple[int, int]):
    """Answers under a response schema: tasks (data/json_tasks.json) on code snippets or prose passages."""
    tasks = json.loads(JSON_TASKS_PATH.read_text(encoding="utf-8"))
    snippets, prose = _code_snippets(), _Prose(tokenizer, rng)
    requests = []
    for _ in range(n):
        task = rng.choice(tasks)
        source = rng.choice(snippets) if task["source"] == "code" else prose.passage(_lengths(rng, inp))
        fence = f"```python\n{source}\n```" if task["source"] == "code" else source
        response_format = {"type": "json_schema",
                           "json_schema": {"name": task["name"], "strict": True, "schema": task["schema"]}}
        requests.append(ChatRequest([{"role": "user", "content": f"{task['ask']}\n\n{fence}"}], _lengths(rng, out),
                                    response_format))
    return requests


def unconstrained(requests: list[ChatRequest], output_lens: list[int]) -> list[ChatRequest]:
    """The same requests without their response formats, each asking for the given number of tokens
    (what the constrained run produced): the free baseline of a constrained workload."""
    return [ChatRequest(r.messages, n) for r, n in zip(requests, output_lens)]


Builder = Callable[[TextTokenizer, random.Random, int, tuple[int, int], tuple[int, int]], list[ChatRequest]]
# name -> (default input length range, default output length range, builder)
WORKLOADS: dict[str, tuple[tuple[int, int], tuple[int, int], Builder]] = {
    "chat": ((50, 1000), (32, 256), _chat),
    "shared-prefix": ((1500, 1500), (32, 128), _shared_prefix),
    "long-context": ((6000, 7500), (64, 128), _long_context),
    "repetitive": ((100, 600), (64, 512), _repetitive),
    "json": ((100, 600), (400, 400), _json),  # an upper bound: each task's schema ends its answer sooner
}
