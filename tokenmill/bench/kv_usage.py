"""What an engine holds and does step by step: its KV blocks in use and its running sequences,
recorded as each step is scheduled (its blocks taken: the step's peak), and each step's tokens
and start time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tokenmill.engine.engine import LLMEngine


@dataclass
class StepRecord:
    blocks_held: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    scheduled_seqs: list[int] = field(default_factory=list)  # sequences in the step
    scheduled_tokens: list[int] = field(default_factory=list)  # and their tokens
    starts: list[float] = field(default_factory=list)  # perf_counter() as it was scheduled

    def decode_tokens_per_second(self, batch: int) -> float:
        """Over the steps that decode batch sequences and nothing else: batch over the median step
        time (each step lasting until the next one is scheduled)."""
        times = [self.starts[i + 1] - self.starts[i] for i in range(len(self.starts) - 1)
                 if self.scheduled_seqs[i] == self.scheduled_tokens[i] == batch]  # fmt: skip
        return batch / statistics.median(times)


@contextmanager
def record_steps(engine: LLMEngine) -> Iterator[StepRecord]:
    """While inside, each scheduled step appends the blocks held and the sequences running."""
    record, scheduler, kv = StepRecord(), engine.scheduler, engine.kv_manager
    schedule = scheduler.schedule

    def recording_schedule():
        out = schedule()
        record.blocks_held.append(kv.num_blocks - kv.num_free_blocks)
        record.running.append(len(scheduler.running))
        record.scheduled_seqs.append(len(out.num_scheduled_tokens))
        record.scheduled_tokens.append(sum(out.num_scheduled_tokens.values()))
        record.starts.append(time.perf_counter())
        return out

    scheduler.schedule = recording_schedule
    try:
        yield record
    finally:
        del scheduler.schedule
