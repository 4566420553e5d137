"""The tokenizers of the models tandem serves: a deterministic synthetic one (the simulated
pod's model) or a real `tokenizer.json`, and the chat rendering the simulated pod applies.

The synthetic rule, so a prompt's token count can be known without running anything:

* text is cut into pieces: optional leading whitespace followed by either a run of up to
  12 letters/digits, or one other character; whitespace at the very end is one more piece;
* each piece is one token. The 1,000 words of `SYNTHETIC_WORDS`, written with one leading
  space (" word"), have ids 0..999; any other piece gets an id in [1000, 32000) from the CRC-32
  of its text.

So a text built as " " + " ".join(words from SYNTHETIC_WORDS) has exactly one token per word,
which is how benchmark prompts of an exact length are made. Generated tokens are drawn from
ids 0..999 and decode back to words.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

SYNTHETIC_VOCAB_SIZE = 32000
NUM_WORDS = 1000

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "s", "l", "k", "m", "t", "x", "th", "nd", "st", "mp")


def _make_words() -> tuple[str, ...]:
    syllables = [o + v for o, v in itertools.product(_ONSETS, _VOWELS)]
    words = (a + b + c for a, b, c in itertools.product(syllables, syllables, _CODAS))
    return tuple(itertools.islice(words, 0, NUM_WORDS * 7, 7))


SYNTHETIC_WORDS: tuple[str, ...] = _make_words()
_PIECE = re.compile(r"\s*(?:[A-Za-z0-9]{1,12}|[^\sA-Za-z0-9])|\s+$")
CHUNK_CHARS = 2048
"""Chunks of a long prompt tokenized (and remembered) apart by `encode_chunked`."""


class Tokenizer(Protocol):
    """What the simulated pod needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def token_strings(self, token_ids: Sequence[int]) -> list[str]: ...


class SyntheticTokenizer:
    """The deterministic tokenizer described in this module's docstring."""

    def __init__(self) -> None:
        self._word_ids = {" " + word: index for index, word in enumerate(SYNTHETIC_WORDS)}
        self._bare_ids = {word: index for index, word in enumerate(SYNTHETIC_WORDS)}

    @property
    def vocab_size(self) -> int:
        return SYNTHETIC_VOCAB_SIZE

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if text.startswith(" "):
            # Most prompts are " word word ...": every piece a known word after one space
            # (words are at most 8 letters, so the rule cuts exactly there). A split is
            # several times faster than the pattern; anything else takes the pattern.
            words: list[int | None] = list(map(self._bare_ids.get, text[1:].split(" ")))
            if None not in words:
                return cast(list[int], words)
        known = self._word_ids.get
        ids = [known(piece, -1) for piece in _PIECE.findall(text)]
        if -1 in ids:  # pieces outside the word list (rare in benchmark prompts)
            pieces = _PIECE.findall(text)
            ids = [i if i >= 0 else self._piece_id(pieces[k]) for k, i in enumerate(ids)]
        return ids

    def encode_chunked(self, text: str, chunk: Callable[[str], tuple[int, ...]]) -> list[int]:
        """`encode(text)` from the ids of its chunks (`chunk` may remember them): the text
        is cut, after at least `CHUNK_CHARS` characters, where a space follows a
        non-space, which no piece spans (a piece is leading whitespace and a word, or one
        other character), so the ids are the same."""
        ids: list[int] = []
        start = 0
        while start < len(text):
            end = _cut(text, start + CHUNK_CHARS)
            ids += chunk(text[start:end])
            start = end
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(self.token_strings(token_ids))

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [" " + SYNTHETIC_WORDS[i] if 0 <= i < NUM_WORDS else f"<{i}>" for i in token_ids]

    def _piece_id(self, piece: str) -> int:
        word_id = self._word_ids.get(piece)
        if word_id is not None:
            return word_id
        span = SYNTHETIC_VOCAB_SIZE - NUM_WORDS
        return NUM_WORDS + zlib.crc32(piece.encode()) % span


class HuggingFaceTokenizer:
    """A real tokenizer loaded from a Hugging Face `tokenizer.json` file."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        self._tokenizer: Any = _HFTokenizer.from_file(str(path))

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return list(encoding.ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [str(self._tokenizer.id_to_token(i)) for i in token_ids]


def _cut(text: str, at: int) -> int:
    """The first position from `at` where whitespace follows a non-space (or the end)."""
    position = at
    while position < len(text):
        position = text.find(" ", position)
        if position < 0:
            return len(text)
        if not text[position - 1].isspace():
            return position
        position += 1
    return len(text)


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The synthetic tokenizer, or the Hugging Face one at `path` when given."""
    return SyntheticTokenizer() if path is None else HuggingFaceTokenizer(path)


def render_chat(messages: Sequence[dict[str, Any]]) -> str:
    """ChatML-style prompt for a list of chat messages, ending with the assistant's turn."""
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        parts.append(f"<|im_start|>{message.get('role', 'user')}\n{content or ''}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)
