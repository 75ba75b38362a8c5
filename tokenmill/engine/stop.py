"""The token-level rules that end a sequence in the engine core. Stop strings need text, so the
front end finds them (engine/output_processor.py) and aborts the sequence here."""

from __future__ import annotations

from tokenmill.engine.sequence import Sequence


def check_stop(seq: Sequence, token_id: int, eos_token_ids: tuple[int, ...],
               max_model_len: int) -> tuple[str, int | None] | None:
    """After token_id joined seq: (finish_reason, stop_reason) if it ends the sequence."""
    params = seq.params
    if seq.num_output_tokens > params.min_tokens:  # the sampler kept stop tokens out below min_tokens
        if token_id in (params.stop_token_ids or ()):
            return "stop", token_id
        if token_id in eos_token_ids and not params.ignore_eos:
            return "stop", None
    if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
        return "length", None
    if seq.num_tokens >= max_model_len:
        return "length", None
    return None
