"""Generated token ids -> text, one token at a time, with stop strings found as the text grows."""

from __future__ import annotations

from collections.abc import Sequence

from tokenmill.model.tokenizer import Tokenizer

# Prompt tokens decoded along with the first output tokens, so that a tokenizer whose decode
# depends on the token before (a SentencePiece leading space) decodes the first one right.
_PROMPT_CONTEXT = 5


class IncrementalDetokenizer:
    """Keeps `output_text` for one sequence.

    Each step decodes only a short window of ids, so the cost per token stays constant: the ids
    already turned into text (kept as context) and those not yet shown. A token that ends inside
    a UTF-8 character decodes to a trailing U+FFFD; its bytes wait in the window until the
    character completes (vLLM's and TGI's prefix_offset/read_offset scheme).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)  # an empty stop string would match everywhere
        self.include_stop_str_in_output = include_stop_str_in_output
        self.skip_special_tokens = skip_special_tokens
        self.output_text = ""
        self.stop_str: str | None = None  # the stop string that ended the text, once one has
        self._window = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._num_read = len(self._window)  # the window's ids already part of the text

    def add_token(self, token_id: int) -> str | None:
        """Appends one generated token; returns the stop string it completes, if any."""
        if self.stop_str is not None:
            raise RuntimeError(f"the output already ended at stop string {self.stop_str!r}")
        self._window.append(token_id)
        new_text = self._read_new_text()
        if not new_text:
            return None
        self.output_text += new_text
        return self._check_stop(len(new_text))

    @property
    def num_streamable_chars(self) -> int:
        """How much of output_text is final: all but a tail that may grow into a stop string."""
        if self.stop_str is not None:
            return len(self.output_text)
        held = max((_partial_match_len(self.output_text, s) for s in self.stop), default=0)
        return len(self.output_text) - held

    def _read_new_text(self) -> str:
        read_text = self._decode(self._window[: self._num_read])
        text = self._decode(self._window)
        if len(text) <= len(read_text) or text.endswith("\ufffd"):
            return ""  # mid-character, or a skipped special token: nothing to show yet
        self._window = self._window[self._num_read :]
        self._num_read = len(self._window)
        return text[len(read_text) :]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _check_stop(self, num_new_chars: int) -> str | None:
        match = self._find_stop(num_new_chars)
        if match is None:
            return None
        stop, start = match
        end = start + len(stop) if self.include_stop_str_in_output else start
        self.output_text = self.output_text[:end]
        self.stop_str = stop
        return stop

    def _find_stop(self, num_new_chars: int) -> tuple[str, int] | None:
        """The earliest (stop string, start) among matches that end in the new text.

        Older text was searched before, so only a match reaching into the new chars is possible.
        """
        best: tuple[str, int] | None = None
        for stop in self.stop:
            start = max(0, len(self.output_text) - num_new_chars - len(stop) + 1)
            index = self.output_text.find(stop, start)
            if index != -1 and (best is None or index < best[1]):
                best = (stop, index)
        return best


def _partial_match_len(text: str, stop: str) -> int:
    """The length of the longest end of text that is a proper beginning of stop."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:length]):
            return length
    return 0
