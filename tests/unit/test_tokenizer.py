"""Synthetic and Hugging Face tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from tandem.kvcache.tokenizer import (
    _PIECE,
    NUM_WORDS,
    SYNTHETIC_VOCAB_SIZE,
    SYNTHETIC_WORDS,
    HuggingFaceTokenizer,
    SyntheticTokenizer,
    load_tokenizer,
    render_chat,
)


def _synthetic_text(num_words: int, stride: int = 37) -> str:
    words = [SYNTHETIC_WORDS[(i * stride) % NUM_WORDS] for i in range(num_words)]
    return " " + " ".join(words)


def test_synthetic_vocabulary_is_a_thousand_distinct_words() -> None:
    assert len(SYNTHETIC_WORDS) == NUM_WORDS
    assert len(set(SYNTHETIC_WORDS)) == NUM_WORDS
    assert all(word.isalpha() and len(word) <= 12 for word in SYNTHETIC_WORDS)


@pytest.mark.parametrize("num_words", [1, 2, 7, 100, 1000, 4096])
def test_synthetic_text_has_one_token_per_word(num_words: int) -> None:
    tokenizer = SyntheticTokenizer()
    text = _synthetic_text(num_words)

    ids = tokenizer.encode(text)

    assert len(ids) == num_words
    assert all(0 <= i < NUM_WORDS for i in ids)
    assert tokenizer.decode(ids) == text


def test_word_ids_are_their_index_in_the_vocabulary() -> None:
    tokenizer = SyntheticTokenizer()

    assert tokenizer.encode(" " + SYNTHETIC_WORDS[0]) == [0]
    assert tokenizer.encode(" " + SYNTHETIC_WORDS[999]) == [999]
    assert tokenizer.token_strings([3]) == [" " + SYNTHETIC_WORDS[3]]


@pytest.mark.parametrize(
    ("text", "num_tokens"),
    [
        ("", 0),
        ("hello", 1),
        ("Hello, world!", 4),
        ("abcdefghijklmnop", 2),
        ("trailing space ", 3),
        ("<|im_start|>", 7),
    ],
)
def test_unknown_pieces_get_deterministic_ids_outside_the_words(text: str, num_tokens: int) -> None:
    first = SyntheticTokenizer().encode(text)
    second = SyntheticTokenizer().encode(text)

    assert first == second
    assert len(first) == num_tokens
    assert all(NUM_WORDS <= i < SYNTHETIC_VOCAB_SIZE for i in first)


def test_different_unknown_pieces_get_different_ids() -> None:
    tokenizer = SyntheticTokenizer()

    assert tokenizer.encode(" alpha") != tokenizer.encode(" omega")
    assert tokenizer.vocab_size == SYNTHETIC_VOCAB_SIZE


def test_unknown_ids_decode_to_placeholders() -> None:
    assert SyntheticTokenizer().decode([5000, 0]) == "<5000> " + SYNTHETIC_WORDS[0]


def _write_word_level_tokenizer(path: Path) -> Path:
    vocab = {"[UNK]": 0, "the": 1, "quick": 2, "brown": 3, "fox": 4, "jumps": 5}
    tokenizer = HFTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(path))
    return path


def test_hugging_face_tokenizer_loads_a_tokenizer_json(tmp_path: Path) -> None:
    path = _write_word_level_tokenizer(tmp_path / "tokenizer.json")

    tokenizer = HuggingFaceTokenizer(path)

    assert tokenizer.vocab_size == 6
    assert tokenizer.encode("the quick brown fox") == [1, 2, 3, 4]
    assert tokenizer.encode("the lazy fox") == [1, 0, 4]
    assert tokenizer.decode([1, 2, 3, 4, 5]) == "the quick brown fox jumps"
    assert tokenizer.token_strings([4, 0]) == ["fox", "[UNK]"]


def test_load_tokenizer_picks_the_implementation(tmp_path: Path) -> None:
    path = _write_word_level_tokenizer(tmp_path / "tokenizer.json")

    assert isinstance(load_tokenizer(None), SyntheticTokenizer)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, HuggingFaceTokenizer)
    assert loaded.encode("jumps") == [5]


def test_render_chat_ends_with_the_assistant_turn() -> None:
    prompt = render_chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, "ignored"]},
        ]
    )

    assert prompt == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(
        st.sampled_from([*SYNTHETIC_WORDS[:50], "x" * 20, "!", "\n", "  ", " \n ", "42", "é"]),
        max_size=3000,
    ),
    st.sampled_from(["", " ", "  ", "\n"]),
)
def test_chunked_encoding_gives_the_ids_of_the_whole_text(parts: list[str], sep: str) -> None:
    tokenizer = SyntheticTokenizer()
    text = " " + sep.join(parts) + " "
    chunks: list[str] = []

    def chunk(piece: str) -> tuple[int, ...]:
        chunks.append(piece)
        return tuple(tokenizer.encode(piece))

    assert tokenizer.encode_chunked(text, chunk) == tokenizer.encode(text)
    assert "".join(chunks) == text


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(
        st.sampled_from([*SYNTHETIC_WORDS[:50], "", "x" * 20, "!", "\n", "42", "é", "ab,"]),
        max_size=200,
    ),
    st.sampled_from(["", " ", "  ", "\n", " \t"]),
)
def test_plain_word_texts_and_others_tokenize_as_the_rule_says(parts: list[str], head: str) -> None:
    # `encode` has a fast path for " word word ..." texts; the ids are the rule's either way.
    tokenizer = SyntheticTokenizer()
    text = head + " ".join(parts)
    ids = [tokenizer._piece_id(piece) for piece in _PIECE.findall(text)]
    assert tokenizer.encode(text) == ids
