"""A benchmark run's results: every request's timestamps per level, kept as JSON and summarized."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tokenmill.bench.client import RequestRecord
from tokenmill.bench.speculation import SpeculationCounts
from tokenmill.bench.stats import LevelSummary, summarize


@dataclass
class LevelResult:
    concurrency: int | None
    request_rate: float | None
    seconds: float
    records: list[RequestRecord]
    slo: dict[str, float] = field(default_factory=dict)
    speculation: SpeculationCounts | None = None  # where the engine speculated

    def __post_init__(self) -> None:
        self.summary: LevelSummary = summarize(self.seconds, self.records, self.slo or None)

    @property
    def load(self) -> float:
        return self.concurrency if self.concurrency is not None else self.request_rate  # type: ignore[return-value]

    @property
    def label(self) -> str:
        if self.concurrency is not None:
            return f"concurrency {self.concurrency}"
        return f"{self.request_rate:g} req/s"

    def samples(self, key: str) -> list[float]:
        ok = [r for r in self.records if r.ok]
        if key == "itl":
            return [gap for r in ok for gap in r.itls]
        return [v for r in ok if (v := getattr(r, key)) is not None]


@dataclass
class BenchRun:
    kind: str  # "serve" or "offline"
    model: str
    workload: str
    target: str  # the server's URL, or "in-process"
    date: str
    command: str
    levels: list[LevelResult]

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "model": self.model, "workload": self.workload, "target": self.target,
            "date": self.date, "command": self.command,
            "levels": [{"concurrency": lv.concurrency, "request_rate": lv.request_rate, "seconds": lv.seconds,
                        "slo": lv.slo, "summary": asdict(lv.summary), "records": [asdict(r) for r in lv.records],
                        "speculation": asdict(lv.speculation) if lv.speculation else None}
                       for lv in self.levels],
        }  # fmt: skip

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> BenchRun:
        data = json.loads(path.read_text(encoding="utf-8"))
        levels = [LevelResult(lv["concurrency"], lv["request_rate"], lv["seconds"],
                              [RequestRecord(**r) for r in lv["records"]], lv["slo"],
                              SpeculationCounts(**lv["speculation"]) if lv.get("speculation") else None)
                  for lv in data["levels"]]
        return cls(data["kind"], data["model"], data["workload"], data["target"], data["date"], data["command"],
                   levels)
