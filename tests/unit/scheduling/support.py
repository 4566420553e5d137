"""Builders for scheduler tests: endpoints in a given state, requests, and seeded cycles."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from tandem.discovery.endpoints import ROLE_LABEL, Endpoint
from tandem.orchestrator.scheduling.config import build_scheduler, parse_config
from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.scheduler import Scheduler
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    EngineMetrics,
    SchedulingRequest,
    ScoredEndpoint,
)

CHARS_PER_TOKEN = 4
BLOCK_TOKENS = 64
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN
"""The default prefix index hashes 64-token blocks of 4 characters per token."""

SYSTEM_PROMPT = "".join(
    f"Rule {n}: answer the user's question about the attached quarterly report briefly. "
    for n in range(40)
)
"""A long shared system prompt (many index blocks), as a group of chat requests would send."""


def group_prompt(question: str, system: str = SYSTEM_PROMPT) -> str:
    """A prompt of a request group: the shared system prompt, then this request's question."""
    return f"{system}\nUser: {question}\nAssistant:"


def make_endpoint(
    name: str,
    role: str | None = "decode",
    *,
    labels: Mapping[str, str] | None = None,
    port: int = 8000,
) -> Endpoint:
    """An endpoint labelled `llm-d.ai/role: role` (no role label when role is None)."""
    all_labels = dict(labels or {})
    if role is not None:
        all_labels[ROLE_LABEL] = role
    return Endpoint(name=name, host=f"{name}.pods.test", port=port, labels=all_labels)


def make_view(
    name: str,
    role: str | None = "decode",
    *,
    waiting: int = 0,
    running: int = 0,
    kv_usage: float = 0.0,
    has_metrics: bool = True,
    fresh: bool = True,
    in_flight: int = 0,
    in_flight_tokens: int = 0,
    labels: Mapping[str, str] | None = None,
    itl_s: float | None = None,
) -> EndpointView:
    """An endpoint as a cycle sees it; `has_metrics=False` means never scraped."""
    metrics = (
        EngineMetrics(waiting=waiting, running=running, kv_usage=kv_usage, scraped_at=0.0)
        if has_metrics
        else None
    )
    return EndpointView(
        endpoint=make_endpoint(name, role, labels=labels),
        metrics=metrics,
        metrics_fresh=fresh and has_metrics,
        in_flight=in_flight,
        in_flight_tokens=in_flight_tokens,
        itl_s=itl_s,
    )


def make_request(
    prompt: str = "hello",
    *,
    num_prompt_tokens: int | None = None,
    headers: Mapping[str, str] | None = None,
    request_id: str = "req-0",
) -> SchedulingRequest:
    """A request whose token count defaults to the `estimate` rule (4 characters a token)."""
    tokens = len(prompt) // CHARS_PER_TOKEN if num_prompt_tokens is None else num_prompt_tokens
    return SchedulingRequest(
        request_id=request_id, prompt=prompt, num_prompt_tokens=tokens, headers=dict(headers or {})
    )


def make_cycle(
    request: SchedulingRequest | None = None,
    *,
    seed: int = 0,
    index: PrefixIndex | None = None,
    now: float = 0.0,
) -> Cycle:
    """A cycle with a seeded random source and (by default) an empty default prefix index."""
    return Cycle(
        request=request or make_request(),
        now=now,
        rng=random.Random(seed),
        prefix_index=index or PrefixIndex(),
    )


def make_scored(scores: Mapping[str, float], role: str = "decode") -> list[ScoredEndpoint]:
    """Scored endpoints, in the mapping's order."""
    return [ScoredEndpoint(make_view(name, role), score) for name, score in scores.items()]


def names(items: Sequence[EndpointView | ScoredEndpoint]) -> list[str]:
    return [item.name for item in items]


def scheduler_from(document: Mapping[str, Any], *, seed: int = 0) -> Scheduler:
    """A scheduler built from an `EndpointPickerConfig` document, with a seeded random source."""
    return build_scheduler(parse_config(document), rng=random.Random(seed))


def pd_config(
    *,
    plugins: Sequence[Mapping[str, Any]],
    prefill: Sequence[Mapping[str, Any]],
    decode: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """A two-profile (prefill, decode) configuration document."""
    return {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": list(plugins),
        "schedulingProfiles": [
            {"name": "prefill", "plugins": list(prefill)},
            {"name": "decode", "plugins": list(decode)},
        ],
    }
