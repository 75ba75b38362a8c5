"""Speculative decoding during a benchmark level: tokens proposed and accepted, read from the
engine (offline) or from a server's Prometheus /metrics, before and after (tokenmill's and
vLLM's counters both end in spec_decode_num_draft_tokens_total and ..._accepted_tokens_total)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

DRAFT_SUFFIX, ACCEPTED_SUFFIX = "spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total"


@dataclass(frozen=True)
class SpeculationCounts:
    method: str
    proposed: int
    accepted: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    def since(self, before: SpeculationCounts | None) -> SpeculationCounts:
        if before is None:
            return self
        return SpeculationCounts(self.method, self.proposed - before.proposed, self.accepted - before.accepted)


def scrape(base_url: str, headers: dict[str, str]) -> SpeculationCounts | None:
    """The server's counters, or None where it has none (no speculation, or no /metrics)."""
    try:
        response = httpx.get(base_url.removesuffix("/v1") + "/metrics", headers=headers, timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    method, totals = None, {DRAFT_SUFFIX: 0.0, ACCEPTED_SUFFIX: 0.0}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            for suffix in totals:
                if sample.name.endswith(suffix):
                    totals[suffix] += sample.value
                    method = sample.labels.get("method", method or "speculative")
    if method is None:
        return None
    return SpeculationCounts(method, int(totals[DRAFT_SUFFIX]), int(totals[ACCEPTED_SUFFIX]))
