"""How the router picks a backend among the healthy ones that serve the request's model.

- round_robin: each in turn.
- least_loaded / model_aware: the fewest tokens in flight (the router's own estimates of each
  request's prompt and output, counted until its answer ends), so that a backend prefilling a long
  prompt counts as busier than one decoding a few short answers; ties go to the fewest requests.
- prefix_aware: SGLang's cache-aware policy over an approximate prefix tree per backend
  (router/prefix_tree.py): the backend that has seen the longest prefix of the prompt, unless the
  load is too unbalanced or the match too short, when the least loaded one.
- session: requests with one session key (the session header, or the body's `user`) go to one
  backend (rendezvous hashing, so a backend going away moves only its own sessions).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Protocol

from tokenmill.router.backends import Backend
from tokenmill.router.config import RouterConfig
from tokenmill.router.prefix_tree import PrefixTree


CHARS_PER_TOKEN = 4  # English text's usual ratio: the router estimates, without the backend's tokenizer
OUTPUT_TOKENS_UNBOUNDED = 256  # what a request without max_tokens weighs for its output


@dataclass(frozen=True)
class RouteRequest:
    text: str  # the prompt, or the messages' contents joined: what prefix matching reads
    session: str | None = None
    max_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.text) // CHARS_PER_TOKEN + 1

    @property
    def output_tokens(self) -> int:
        return self.max_tokens if isinstance(self.max_tokens, int) and self.max_tokens > 0 else OUTPUT_TOKENS_UNBOUNDED


class Policy(Protocol):
    def choose(self, request: RouteRequest, candidates: list[Backend]) -> Backend: ...


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, request: RouteRequest, candidates: list[Backend]) -> Backend:
        return candidates[next(self._turn) % len(candidates)]


class LeastLoaded:
    def choose(self, request: RouteRequest, candidates: list[Backend]) -> Backend:
        return least_loaded(candidates)


class PrefixAware:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.trees: dict[str, PrefixTree] = {}

    def choose(self, request: RouteRequest, candidates: list[Backend]) -> Backend:
        loads = [b.in_flight for b in candidates]
        config = self.config
        unbalanced = (max(loads) - min(loads) > config.balance_abs_threshold
                      and max(loads) > config.balance_rel_threshold * min(loads))  # fmt: skip
        chosen = least_loaded(candidates)
        if not unbalanced and request.text:
            matches = [self._tree(b).match(request.text) for b in candidates]
            best = max(range(len(candidates)), key=lambda i: (matches[i], -candidates[i].in_flight))
            if matches[best] >= config.cache_threshold * len(request.text):
                chosen = candidates[best]
        self._tree(chosen).insert(request.text)
        return chosen

    def _tree(self, backend: Backend) -> PrefixTree:
        return self.trees.setdefault(backend.url, PrefixTree())


class SessionAffinity:
    def choose(self, request: RouteRequest, candidates: list[Backend]) -> Backend:
        if request.session is None:
            return least_loaded(candidates)
        return max(candidates, key=lambda b: hashlib.sha256(f"{request.session}|{b.url}".encode()).digest())


def least_loaded(candidates: list[Backend]) -> Backend:
    return min(candidates, key=lambda b: (b.tokens_in_flight, b.in_flight, b.requests))


def make_policy(config: RouterConfig) -> Policy:
    if config.policy == "round_robin":
        return RoundRobin()
    if config.policy == "prefix_aware":
        return PrefixAware(config)
    if config.policy == "session":
        return SessionAffinity()
    return LeastLoaded()  # least_loaded, and model_aware: the pool already keeps to the model's backends
