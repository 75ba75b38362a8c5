"""What an engine holds step by step: its KV blocks in use and its running sequences, recorded as
each step is scheduled (its blocks taken: the step's peak)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tokenmill.engine.engine import LLMEngine


@dataclass
class StepRecord:
    blocks_held: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)


@contextmanager
def record_steps(engine: LLMEngine) -> Iterator[StepRecord]:
    """While inside, each scheduled step appends the blocks held and the sequences running."""
    record, scheduler, kv = StepRecord(), engine.scheduler, engine.kv_manager
    schedule = scheduler.schedule

    def recording_schedule():
        out = schedule()
        record.blocks_held.append(kv.num_blocks - kv.num_free_blocks)
        record.running.append(len(scheduler.running))
        return out

    scheduler.schedule = recording_schedule
    try:
        yield record
    finally:
        del scheduler.schedule
