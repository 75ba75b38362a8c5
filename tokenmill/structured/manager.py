"""The engine's side of structured outputs: a grammar matcher per constrained sequence, built off
the step loop; each step's masks for the sequences that sample; the tokens they accept.

Compiling runs in one background thread, the tokenizer trie (a fifth of a second on the default
model) included, so a request whose grammar is compiling waits in `compiling` while the others
step. The masks are computed here, in the engine core, and travel to the runner as a bitmask in
the `SchedulerOutput`: a runner (or each tensor-parallel worker) applies them and never holds a
matcher.
"""

from __future__ import annotations

import concurrent.futures
import time
from concurrent.futures import Future, ThreadPoolExecutor

import llguidance

from tokenmill.engine.messages import GrammarBitmask
from tokenmill.model.tokenizer import Tokenizer
from tokenmill.structured.grammar import GrammarCompiler, compute_bitmask
from tokenmill.structured.params import StructuredOutputsError, StructuredOutputsParams


class StructuredOutputManager:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenmill-grammar")
        self._compiler: Future[GrammarCompiler] | None = None
        self._tokenizer, self._vocab_size = tokenizer, vocab_size
        self._building: dict[int, Future[llguidance.LLMatcher]] = {}  # seq id -> its matcher, compiling
        self._matchers: dict[int, llguidance.LLMatcher] = {}
        self.mask_seconds = 0.0  # computing the step's masks, since start
        self.masked_steps = 0

    def prepare(self) -> None:
        """Starts building the backend's tokenizer trie, so that the first constrained request need not wait for it."""
        if self._compiler is None:
            self._compiler = self._executor.submit(GrammarCompiler, self._tokenizer, self._vocab_size)

    def add(self, seq_id: int, params: StructuredOutputsParams) -> None:
        """Starts building the sequence's matcher; `take_ready` says when it can be scheduled."""
        self.prepare()
        compiler = self._compiler
        self._building[seq_id] = self._executor.submit(lambda: compiler.result().matcher(params))

    @property
    def active(self) -> bool:
        """Some sequence holds a matcher."""
        return bool(self._matchers)

    @property
    def compiling(self) -> bool:
        return bool(self._building)

    def take_ready(self) -> tuple[list[int], dict[int, StructuredOutputsError]]:
        """The sequences whose matcher is built since the last call, and those whose constraint the
        backend refused (with why)."""
        ready, failed = [], {}
        for seq_id, future in list(self._building.items()):
            if future.done():
                del self._building[seq_id]
                try:
                    self._matchers[seq_id] = future.result()
                    ready.append(seq_id)
                except StructuredOutputsError as exc:
                    failed[seq_id] = exc
                except Exception as exc:  # whatever else the backend raises refuses this request alone
                    failed[seq_id] = StructuredOutputsError("structured_outputs", f"the grammar backend failed: {exc}")
        return ready, failed

    def wait(self, timeout: float) -> None:
        """Until a matcher is built, or timeout seconds: what an engine with nothing else to run does."""
        concurrent.futures.wait(self._building.values(), timeout, concurrent.futures.FIRST_COMPLETED)

    def bitmask(self, seq_ids: list[int]) -> GrammarBitmask | None:
        """The tokens allowed next for those of seq_ids that are constrained (None if none is)."""
        constrained = [seq_id for seq_id in seq_ids if seq_id in self._matchers]
        if not constrained:
            return None
        start = time.perf_counter()
        bits = compute_bitmask([self._matchers[seq_id] for seq_id in constrained], self._vocab_size)
        self.mask_seconds += time.perf_counter() - start
        self.masked_steps += 1
        return GrammarBitmask(constrained, bits)

    def accept(self, seq_id: int, token_id: int) -> None:
        matcher = self._matchers.get(seq_id)
        if matcher is not None:
            matcher.consume_token(token_id)

    def free(self, seq_id: int) -> None:
        """The sequence is finished: its matcher goes (kept until then, across preemption)."""
        self._matchers.pop(seq_id, None)
        building = self._building.pop(seq_id, None)
        if building is not None:
            building.cancel()

    @property
    def compile_seconds(self) -> float:
        return self._compiler.result().compile_seconds if self._compiler is not None and self._compiler.done() else 0.0
