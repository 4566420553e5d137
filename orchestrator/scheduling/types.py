"""Values the scheduler works on: endpoints, their state, the request, and the outcome.

Everything here is immutable and built fresh for each scheduling cycle from the endpoint
store, so plugins are pure functions of their inputs (plus the cycle's injected clock and
random source).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tandem.discovery.endpoints import Endpoint


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """What the last scrape of a pod's `/metrics` said (vLLM's names in comments)."""

    waiting: int  # vllm:num_requests_waiting
    running: int  # vllm:num_requests_running
    kv_usage: float  # vllm:kv_cache_usage_perc, 0..1
    scraped_at: float
    block_size: int | None = None  # vllm:cache_config_info{block_size}
    num_gpu_blocks: int | None = None  # vllm:cache_config_info{num_gpu_blocks}
    waiting_for_capacity: int | None = None
    """vllm:num_requests_waiting_by_reason{reason="capacity"}, where the engine reports it:
    the waiting requests that lack room, not those waiting for their KV to arrive."""
    computed_prompt_tokens: float | None = None
    """vllm:prompt_tokens_by_source{source="local_compute"}, where the engine reports it: the
    prompt tokens it has computed itself since it started (a counter)."""
    itl_sum_s: float | None = None
    itl_count: float | None = None
    """vllm:inter_token_latency_seconds' sum and count (counters): the gaps between the
    tokens it generated since it started."""

    @property
    def kv_capacity_tokens(self) -> int | None:
        """Tokens the pod's KV cache holds, where its cache geometry is known."""
        if not self.num_gpu_blocks or not self.block_size:
            return None
        return self.num_gpu_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One endpoint as a scheduling cycle sees it."""

    endpoint: Endpoint
    metrics: EngineMetrics | None = None
    metrics_fresh: bool = False
    """False when the last scrape is older than the staleness limit (or never happened)."""
    in_flight: int = 0
    """Requests the orchestrator has sent there and not yet seen finish (always current)."""
    in_flight_tokens: int = 0
    """Uncached prompt tokens of those requests still being prefilled."""
    itl_s: float | None = None
    """The pod's recent mean inter-token gap (seconds, as the pod reports them), learned from
    its ITL histogram between scrapes; None until it has generated tokens while scraped."""

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def fresh_metrics(self) -> EngineMetrics | None:
        """The last scrape's metrics while they are fresh; None when stale or missing, which
        every plugin treats as knowing nothing of the pod's load."""
        return self.metrics if self.metrics_fresh else None


@dataclass(frozen=True, slots=True)
class EnginePrompt:
    """What the engine will tokenize, as the client sent it: one of a text, token ids or
    chat messages (the first prompt of a request that has several)."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class SchedulingRequest:
    """What the scheduler knows about a request."""

    request_id: str
    prompt: str
    """The text the prefix index hashes: the prompt, or the rendered chat messages."""
    num_prompt_tokens: int
    """An estimate unless token ids came with the request."""
    headers: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    engine_prompt: EnginePrompt | None = None
    """For indexes that name blocks as the engine does (`precise-prefix-cache-producer`)."""


@dataclass(frozen=True, slots=True)
class ScoredEndpoint:
    """An endpoint and its weighted total score in one profile."""

    view: EndpointView
    score: float

    @property
    def name(self) -> str:
        return self.view.endpoint.name


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """The ranked picks of one profile and each scorer's raw scores (for debugging)."""

    profile: str
    picks: tuple[ScoredEndpoint, ...]
    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def best(self) -> ScoredEndpoint:
        return self.picks[0]


class PDDecision(enum.StrEnum):
    DISAGGREGATE = "disaggregate"
    LOCAL = "local"
    WHOLE_ON_PREFILL = "whole_on_prefill"
    """A decider's choice only: the prefill pick serves the request whole (prefill and
    decode). The profile handler makes that pod the primary target and the result LOCAL."""


@dataclass(frozen=True, slots=True)
class SchedulingResult:
    """Where a request goes: the decode (primary) pick, and prefill picks if disaggregated."""

    decode: ProfileResult
    prefill: ProfileResult | None
    decision: PDDecision
    reason: str
    """Why, as a fixed label value (e.g. "uncached_above_threshold", "aggregated_pool")."""
    uncached_tokens: int | None = None
    """Prompt tokens the pod that prefills (the first prefill target when disaggregated, else
    the decode pick) is predicted not to hold: the prefill work the request adds there."""

    @property
    def prefill_targets(self) -> tuple[ScoredEndpoint, ...]:
        """Ranked prefill endpoints when disaggregated, else empty."""
        if self.decision is PDDecision.DISAGGREGATE and self.prefill is not None:
            return self.prefill.picks
        return ()
