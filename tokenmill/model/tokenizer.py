"""The tokenizer: built from GGUF metadata (byte-level BPE, or SentencePiece's BPE with byte
fallback) or read from a tokenizer.json, plus the chat template that turns messages into a prompt."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors

from tokenmill.model.gguf_file import read_gguf

_CONTROL = 3  # llama.cpp token types
_USER_DEFINED = 4
# Tokens that end a chat turn, where the file names no end-of-turn token: generation stops at
# them as at EOS (Gemma ends its turns with <end_of_turn> while its EOS is <eos>).
_END_OF_TURN = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>")
_SPACE = "\u2581"  # SentencePiece's visible space


def _gpt2_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_split() -> pre_tokenizers.PreTokenizer:
    # SmolLM's tokenizer.json cuts numbers into single digits before the GPT-2 split.
    digits = pre_tokenizers.Digits(individual_digits=True)
    return pre_tokenizers.Sequence([digits, _gpt2_split()])


# Keyed by `tokenizer.ggml.pre`: how text is cut into words before BPE, which must match how the
# merges were learned. A file without the key gets "default".
_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _gpt2_split,
    "gpt-2": _gpt2_split,
    "smollm": _smollm_split,
}


class Tokenizer:
    """Text <-> token ids, and chat messages -> prompt text."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        bos_token_id: int | None,
        eos_token_id: int | None,
        chat_template: str | None,
    ) -> None:
        self._backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None
        ends = [eos_token_id, *(backend.token_to_id(token) for token in _END_OF_TURN)]
        self.eos_token_ids = tuple(dict.fromkeys(t for t in ends if t is not None))  # where generation stops

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        kind = metadata.get("tokenizer.ggml.model")
        if kind == "gpt2":
            backend = _byte_level_bpe(metadata)
        elif kind == "llama":
            backend = _sentencepiece_bpe(metadata)
        else:
            raise ValueError(f"tokenizer.ggml.model {kind!r} is not supported: 'gpt2' (byte-level BPE) and "
                             "'llama' (SentencePiece BPE) are")  # fmt: skip
        bos_token_id = metadata.get("tokenizer.ggml.bos_token_id")
        if metadata.get("tokenizer.ggml.add_bos_token", False):
            _add_bos(backend, bos_token_id)
        return cls(backend, bos_token_id, metadata.get("tokenizer.ggml.eos_token_id"),
                   metadata.get("tokenizer.chat_template"))

    @classmethod
    def from_pretrained_dir(cls, path: Path) -> Tokenizer:
        path = Path(path)
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        config_path = path / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        bos_token_id = _token_id(backend, config.get("bos_token"))
        if config.get("add_bos_token"):
            _add_bos(backend, bos_token_id)
        template_path = path / "chat_template.jinja"
        if template_path.is_file():
            chat_template = template_path.read_text()
        else:
            chat_template = _default_template(config.get("chat_template"))
        return cls(backend, bos_token_id, _token_id(backend, config.get("eos_token")), chat_template)

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def to_json(self) -> str:
        """The tokenizers library's serialization of the whole tokenizer (a grammar backend builds its trie from it)."""
        return self._backend.to_str()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids, with BOS first where the tokenizer adds one, unless the text begins with it already
        (a chat template that writes it, as Gemma's does)."""
        if add_special_tokens and self.bos_token_id is not None and text.startswith(self._token_text(self.bos_token_id)):
            add_special_tokens = False
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        """The token's text as a reader sees it (" world", not the vocabulary's "Ġworld")."""
        return self.decode([token_id], skip_special_tokens=False)

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        if self._template is None:
            raise ValueError("this tokenizer has no chat template: send a plain prompt instead")
        _check_messages(messages)
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._token_text(self.bos_token_id),
                eos_token=self._token_text(self.eos_token_id),
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"the chat template rejected the messages: {exc}") from exc

    def _token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else self._backend.id_to_token(token_id) or ""


def load_tokenizer(path: Path) -> Tokenizer:
    """The model's tokenizer alone, without its weights or torch (for a process that only tokenizes)."""
    if path.is_dir():
        return Tokenizer.from_pretrained_dir(path)
    if path.is_file():
        return Tokenizer.from_gguf_metadata(read_gguf(path).metadata)
    raise FileNotFoundError(f"model not found: {path} is neither a GGUF file nor a model directory")


def _byte_level_bpe(metadata: dict[str, Any]) -> tokenizers.Tokenizer:
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        supported = ", ".join(sorted(_PRE_TOKENIZERS))
        raise ValueError(f"tokenizer.ggml.pre {pre!r} is not supported (supported: {supported})")
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    # Byte-level vocabularies spell bytes as printable characters, so a merge never holds a space.
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = tokenizers.Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    _add_whole_tokens(backend, tokens, metadata.get("tokenizer.ggml.token_type", []))
    return backend


def _sentencepiece_bpe(metadata: dict[str, Any]) -> tokenizers.Tokenizer:
    """SentencePiece's BPE: spaces spelled as U+2581, bytes outside the vocabulary as <0xNN>
    tokens. A GGUF holds no merges for it, so they are rebuilt from the vocabulary: every split of
    a token into two tokens, the merge ranked by its result. Gemma's scores do not follow its
    merge order while its token order does, so the rank is the token's place in the file."""
    if metadata.get("tokenizer.ggml.add_space_prefix", False):
        raise ValueError("a SentencePiece vocabulary that adds a space prefix is not supported yet")
    # A token of spaces only is stored with real spaces, while the text's spaces become U+2581.
    tokens = [_SPACE * len(t) if t and not t.strip(" ") else t for t in metadata["tokenizer.ggml.tokens"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = tokenizers.Tokenizer(models.BPE(vocab, _merges_from_vocab(vocab), unk_token=tokens[metadata.get(
        "tokenizer.ggml.unknown_token_id", 0)], fuse_unk=True, byte_fallback=True))  # fmt: skip
    backend.normalizer = normalizers.Replace(" ", _SPACE)
    backend.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    _add_whole_tokens(backend, tokens, metadata.get("tokenizer.ggml.token_type", []))
    return backend


def _merges_from_vocab(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The merges that build each token from two others, the earliest token's first; between
    splits of one token, the longer left part first (as SentencePiece's own conversion ranks them)."""
    ranked = []
    for token, rank in vocab.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((rank, -len(left), left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _add_whole_tokens(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control and user-defined tokens match whole in the text; BPE alone would cut them up."""
    pairs = list(zip(tokens, types))
    backend.add_special_tokens(
        [AddedToken(token, normalized=False, special=True) for token, kind in pairs if kind == _CONTROL]
    )
    backend.add_tokens(
        [AddedToken(token, normalized=False) for token, kind in pairs if kind == _USER_DEFINED]
    )


def _add_bos(backend: tokenizers.Tokenizer, bos_token_id: int | None) -> None:
    if bos_token_id is None:
        raise ValueError("the tokenizer asks for a BOS token but names none")
    bos = backend.id_to_token(bos_token_id)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_token_id)]
    )


def _token_id(backend: tokenizers.Tokenizer, token: str | dict[str, Any] | None) -> int | None:
    """tokenizer_config.json names a token as a string or, in older files, as {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return None if token is None else backend.token_to_id(token)


def _default_template(template: str | list[dict[str, str]] | None) -> str | None:
    """Older configs may hold several named templates; the one named "default" is for chat."""
    if isinstance(template, list):
        return next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _compile_template(source: str) -> jinja2.Template:
    # Templates come with model files, so they run sandboxed; the options match Hugging Face's.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be a dict, got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f"messages[{index}] needs a string {key!r}")
