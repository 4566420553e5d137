"""The scheduler's plugin interfaces and the per-request cycle they all see.

A scheduling cycle, for one request:

  1. The profile handler decides which profiles run and in what order (tandem's two-pass
     handler: `prefill`, then `decode`).
  2. Each profile filters the candidate endpoints (`Filter`, in order), has every `Scorer`
     score the survivors in [0, 1], sums `weight x score` per endpoint, and lets its `Picker`
     rank the result.
  3. The handler asks its `Decider` whether the request is worth disaggregating, and returns
     a `SchedulingResult`.

Plugins are pure: they read the cycle (request, clock, random source, prefix matches) and the
endpoint views, and return values. Type names and parameter names follow llm-d's EPP so an
operator can bring an `EndpointPickerConfig`-style file.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from orchestrator.scheduling.prefix_index import PrefixIndex
from orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    SchedulingRequest,
    SchedulingResult,
    ScoredEndpoint,
)


@dataclass(slots=True)
class Cycle:
    """One scheduling cycle: the request, the clock, randomness, and shared lookups."""

    request: SchedulingRequest
    now: float
    rng: random.Random
    prefix_index: PrefixIndex
    _block_hashes: list[int] | None = field(default=None, init=False)
    _matches: dict[str, int] = field(default_factory=dict, init=False)

    @property
    def block_hashes(self) -> list[int]:
        """The request's prefix-block hashes, computed once per cycle."""
        if self._block_hashes is None:
            self._block_hashes = self.prefix_index.hashes(self.request.prompt)
        return self._block_hashes

    def matched_blocks(self, endpoint_name: str) -> int:
        """Leading prefix blocks the index believes `endpoint_name` holds."""
        if endpoint_name not in self._matches:
            self._matches[endpoint_name] = self.prefix_index.match(self.block_hashes, endpoint_name)
        return self._matches[endpoint_name]

    def matched_tokens(self, endpoint_name: str) -> int:
        """Estimated prompt tokens already cached on `endpoint_name`."""
        matched = self.matched_blocks(endpoint_name) * self.prefix_index.block_size_tokens
        return min(matched, self.request.num_prompt_tokens)


@runtime_checkable
class Filter(Protocol):
    """Keeps the endpoints a profile may consider."""

    name: str

    def filter(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> list[EndpointView]: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores each endpoint in [0, 1] (higher is better); keyed by endpoint name."""

    name: str

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]: ...


@runtime_checkable
class Picker(Protocol):
    """Ranks scored endpoints and keeps the best few."""

    name: str

    def pick(self, cycle: Cycle, scored: Sequence[ScoredEndpoint]) -> list[ScoredEndpoint]: ...


@runtime_checkable
class Decider(Protocol):
    """Decides whether a request gets a remote prefill; returns the decision and why."""

    name: str

    def decide(
        self, cycle: Cycle, decode: ScoredEndpoint, prefill: ProfileResult | None
    ) -> tuple[PDDecision, str]: ...


class ProfileRunner(Protocol):
    """What a profile handler needs from a profile."""

    @property
    def name(self) -> str: ...

    def run(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> ProfileResult | None: ...


@runtime_checkable
class ProfileHandler(Protocol):
    """Runs the profiles in its order and turns their results into a `SchedulingResult`."""

    name: str

    def run(
        self,
        cycle: Cycle,
        profiles: Mapping[str, ProfileRunner],
        endpoints: Sequence[EndpointView],
    ) -> SchedulingResult: ...


@runtime_checkable
class PrefixIndexConfig(Protocol):
    """A plugin that configures the approximate prefix index (llm-d's producer plugin)."""

    name: str

    @property
    def auto_tune(self) -> bool: ...

    def build_index(self, seed: str) -> PrefixIndex: ...


@runtime_checkable
class SessionRecorder(Protocol):
    """A plugin that learns from where a request went (session affinity)."""

    name: str

    def remember(self, headers: Mapping[str, str], result: SchedulingResult) -> None: ...
