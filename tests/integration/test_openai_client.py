"""The official openai client against a simulated pod on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tandem.kvcache.tokenizer import SYNTHETIC_WORDS, render_chat
from tests.support.servers import pod_config, running_pod, scrape

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def pod_url() -> Iterator[str]:
    with running_pod(pod_config(time_scale=0.05)) as url:
        yield url


@pytest.fixture
def client(pod_url: str) -> OpenAI:
    return OpenAI(base_url=f"{pod_url}/v1", api_key="unused", max_retries=0)


def synthetic_text(num_words: int, offset: int = 0) -> str:
    """Text of exactly `num_words` synthetic tokens."""
    words = [SYNTHETIC_WORDS[(offset + i) % len(SYNTHETIC_WORDS)] for i in range(num_words)]
    return " " + " ".join(words)


def token_count(pod_url: str, **body: object) -> int:
    reply = httpx.post(f"{pod_url}/tokenize", json=body, timeout=10)
    reply.raise_for_status()
    count: int = reply.json()["count"]
    return count


def test_completion_usage_matches_the_tokenizer(client: OpenAI, pod_url: str) -> None:
    prompt = synthetic_text(50)
    completion = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7)

    assert completion.usage is not None
    assert completion.usage.prompt_tokens == token_count(pod_url, prompt=prompt) == 50
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == 57
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text.split()) == 7
    assert completion.id.startswith("cmpl-")


def test_streamed_completion_yields_every_token_and_usage(client: OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL,
        prompt=synthetic_text(20, offset=100),
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 5
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 4 + ["length"]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (20, 5)


def test_chat_completion_counts_the_templated_prompt(client: OpenAI, pod_url: str) -> None:
    messages = [
        {"role": "system", "content": synthetic_text(30, offset=7)},
        {"role": "user", "content": "What is the answer?"},
    ]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)  # type: ignore[arg-type]

    assert chat.usage is not None
    assert chat.usage.prompt_tokens == token_count(pod_url, messages=messages)
    assert chat.usage.completion_tokens == 4
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.id.startswith("chatcmpl-")


def test_streamed_chat_starts_with_the_role(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_completion_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:] if c.choices]
    assert len(content) == 3
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_chat_without_max_tokens_stops_at_the_natural_length(client: OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}]
    )

    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 256  # the pod's natural_output_len default


def test_ignore_eos_runs_to_max_tokens(client: OpenAI) -> None:
    completion = client.completions.create(
        model=MODEL, prompt="hello", max_tokens=300, extra_body={"ignore_eos": True}
    )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 300


def test_repeated_prefix_is_served_from_the_cache(client: OpenAI, pod_url: str) -> None:
    shared = synthetic_text(640, offset=300)  # 40 full blocks
    before = scrape(pod_url)
    first = client.completions.create(model=MODEL, prompt=shared + " one", max_tokens=1)
    second = client.completions.create(model=MODEL, prompt=shared + " two", max_tokens=1)
    after = scrape(pod_url)

    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 640
    hits = after["vllm:prefix_cache_hits_total{}"] - before["vllm:prefix_cache_hits_total{}"]
    assert hits == 640


def test_models_lists_the_served_model(client: OpenAI) -> None:
    models = client.models.list()

    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "vllm"


def test_chat_template_is_what_the_pod_tokenizes(pod_url: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    reply = httpx.post(
        f"{pod_url}/tokenize",
        json={"prompt": render_chat(messages), "return_token_strs": True},
        timeout=10,
    ).json()

    assert reply["count"] == token_count(pod_url, messages=messages)
    assert len(reply["token_strs"]) == reply["count"]
