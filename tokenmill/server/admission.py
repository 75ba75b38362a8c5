"""Admission control: a bounded queue of requests that are admitted but not yet producing tokens.

Past either bound (how many, how many prompt tokens) a request is refused at once with a 429,
rather than queued behind work it would wait minutes for.
"""

from __future__ import annotations


class QueueFullError(Exception):
    pass


class Ticket:
    """A request's place in the queue; released when its first tokens arrive or it ends."""

    def __init__(self, admission: AdmissionControl, num_tokens: int) -> None:
        self._admission, self._num_tokens, self._held = admission, num_tokens, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.num_queued -= 1
            self._admission.queued_tokens -= self._num_tokens


class AdmissionControl:
    def __init__(self, max_requests: int, max_tokens: int) -> None:
        self.max_requests, self.max_tokens = max_requests, max_tokens
        self.num_queued = 0
        self.queued_tokens = 0

    def admit(self, num_prompt_tokens: int) -> Ticket:
        if self.num_queued >= self.max_requests:
            raise QueueFullError(f"the server's queue is full ({self.num_queued} requests waiting); retry later")
        if self.queued_tokens + num_prompt_tokens > self.max_tokens and self.num_queued > 0:
            raise QueueFullError(
                f"the server's queue is full ({self.queued_tokens} prompt tokens waiting); retry later"
            )
        self.num_queued += 1
        self.queued_tokens += num_prompt_tokens
        return Ticket(self, num_prompt_tokens)
