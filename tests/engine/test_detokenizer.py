"""Incremental detokenization and stop strings, on the real SmolLM2 tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tokenmill.engine.detokenizer import IncrementalDetokenizer
from tokenmill.model.gguf_file import read_gguf
from tokenmill.model.tokenizer import Tokenizer

PROMPT = "<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(gguf_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf(gguf_path).metadata)


def make(tokenizer: Tokenizer, **kwargs: Any) -> IncrementalDetokenizer:
    return IncrementalDetokenizer(tokenizer, tokenizer.encode(PROMPT), **kwargs)


def feed(detok: IncrementalDetokenizer, ids: Sequence[int]) -> str | None:
    """Feeds ids until one completes a stop string; returns that stop string, if any."""
    for token_id in ids:
        stop = detok.add_token(token_id)
        if stop is not None:
            return stop
    return None


def test_multibyte_characters_never_show_broken(tokenizer: Tokenizer) -> None:
    text = "Robots 🤖 say 你好世界 and 👨\u200d👩\u200d👧 too."
    ids = tokenizer.encode(text)
    detok = make(tokenizer)
    num_held_back = 0
    for token_id in ids:
        before = detok.output_text
        detok.add_token(token_id)
        assert "\ufffd" not in detok.output_text
        num_held_back += detok.output_text == before
    assert detok.output_text == tokenizer.decode(ids) == text
    assert num_held_back > 0  # some tokens did end mid-character


def test_decodes_a_short_window_not_the_whole_sequence(
    tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = tokenizer.encode("The same sentence, over and over. " * 40)
    window_sizes: list[int] = []
    decode = tokenizer.decode

    def recording_decode(ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        window_sizes.append(len(ids))
        return decode(ids, skip_special_tokens)

    detok = make(tokenizer)
    monkeypatch.setattr(tokenizer, "decode", recording_decode)
    feed(detok, ids)
    assert detok.output_text == decode(ids)
    assert max(window_sizes) <= 6  # the 5 prompt tokens of context, then one or two at a time


def test_special_tokens_skipped_or_kept(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hi<|im_end|>")
    skipping, keeping = make(tokenizer), make(tokenizer, skip_special_tokens=False)
    feed(skipping, ids)
    feed(keeping, ids)
    assert (skipping.output_text, keeping.output_text) == ("Hi", "Hi<|im_end|>")


def test_stop_string_split_across_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Hello world, goodbye world.")
    stop = "world, good"
    assert not any(stop in tokenizer.decode([i]) for i in ids)  # only a span of tokens holds it
    detok = make(tokenizer, stop=[stop])
    assert feed(detok, ids) == stop
    assert detok.output_text == "Hello "
    assert detok.stop_str == stop


def test_stop_string_kept_when_asked(tokenizer: Tokenizer) -> None:
    detok = make(tokenizer, stop=["world, good"], include_stop_str_in_output=True)
    assert feed(detok, tokenizer.encode("Hello world, goodbye world.")) == "world, good"
    assert detok.output_text == "Hello world, good"


def test_earliest_stop_string_wins(tokenizer: Tokenizer) -> None:
    # Both complete with the token " world"; the one starting first ends the text.
    detok = make(tokenizer, stop=["o w", "lo wor"])
    assert feed(detok, tokenizer.encode("Hello world")) == "lo wor"
    assert detok.output_text == "Hel"


def test_no_tokens_after_a_stop(tokenizer: Tokenizer) -> None:
    detok = make(tokenizer, stop=["world"])
    ids = tokenizer.encode("Hello world again")
    feed(detok, ids)
    with pytest.raises(RuntimeError):
        detok.add_token(ids[-1])


def test_empty_stop_string_is_ignored(tokenizer: Tokenizer) -> None:
    detok = make(tokenizer, stop=[""])
    assert feed(detok, tokenizer.encode("Hello world")) is None
    assert detok.output_text == "Hello world"


def test_streamable_text_holds_back_a_possible_stop(tokenizer: Tokenizer) -> None:
    hello, world, wide = tokenizer.encode("Hello world wide")
    detok = make(tokenizer, stop=["world peace"])
    feed(detok, [hello, world])
    assert detok.output_text[: detok.num_streamable_chars] == "Hello "
    feed(detok, [wide])
    assert detok.num_streamable_chars == len(detok.output_text) == len("Hello world wide")


def test_streamable_text_after_a_stop_is_everything(tokenizer: Tokenizer) -> None:
    detok = make(tokenizer, stop=["world peace"])
    assert feed(detok, tokenizer.encode("Hello world peace")) == "world peace"
    assert detok.num_streamable_chars == len(detok.output_text) == len("Hello ")
