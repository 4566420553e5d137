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

from tandem.discovery.endpoints import Endpoint
from tandem.orchestrator.scheduling.precise_index import PreciseIndex
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    SchedulingRequest,
    SchedulingResult,
    ScoredEndpoint,
)


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """How much of the prompt an endpoint holds: leading blocks of the index that knows it
    best (the precise one where the endpoint's events are whole, else the approximate one)."""

    blocks: int
    total: int
    block_size_tokens: int
    precise: bool = False


@runtime_checkable
class PreciseMatcher(Protocol):
    """A plugin that keeps a precise prefix index from the engines' KV events
    (`precise-prefix-cache-producer`): cycles match with it, the scheduler enters routed
    requests in it, and the orchestrator feeds it events."""

    name: str
    index: PreciseIndex

    def block_hashes(self, request: SchedulingRequest, block_size: int) -> list[int] | None: ...

    def default_block_size(self) -> int: ...

    def speculate(
        self, request: SchedulingRequest, endpoints: Sequence[str], matched: Mapping[str, int],
        now: float,
    ) -> None: ...  # fmt: skip

    def inherit(self, previous: PreciseMatcher) -> None: ...

    @property
    def topic(self) -> bytes: ...

    def events_endpoint(self, endpoint: Endpoint) -> str: ...

    def replay_endpoint(self, endpoint: Endpoint) -> str | None: ...


@dataclass(slots=True)
class Cycle:
    """One scheduling cycle: the request, the clock, randomness, and shared lookups."""

    request: SchedulingRequest
    now: float
    rng: random.Random
    prefix_index: PrefixIndex
    precise: PreciseMatcher | None = None
    _block_hashes: list[int] | None = field(default=None, init=False)
    _matches: dict[str, PrefixMatch] = field(default_factory=dict, init=False)
    _precise_matches: dict[int, tuple[list[int], dict[str, int]] | None] = field(
        default_factory=dict, init=False
    )
    """Per engine block size: the request's block hashes and every endpoint's match."""

    @property
    def block_hashes(self) -> list[int]:
        """The request's approximate-index block hashes, computed once per cycle."""
        if self._block_hashes is None:
            self._block_hashes = self.prefix_index.hashes(self.request.prompt)
        return self._block_hashes

    def match(self, endpoint_name: str) -> PrefixMatch:
        """How much of the prompt `endpoint_name` holds, computed once per cycle."""
        found = self._matches.get(endpoint_name)
        if found is None:
            found = self._precise_match(endpoint_name) or PrefixMatch(
                self.prefix_index.match(self.block_hashes, endpoint_name),
                len(self.block_hashes),
                self.prefix_index.block_size_tokens,
            )
            self._matches[endpoint_name] = found
        return found

    def matched_blocks(self, endpoint_name: str) -> int:
        """Leading prompt blocks `endpoint_name` is believed to hold."""
        return self.match(endpoint_name).blocks

    def matched_tokens(self, endpoint_name: str) -> int:
        """Prompt tokens believed cached on `endpoint_name`."""
        found = self.match(endpoint_name)
        return min(found.blocks * found.block_size_tokens, self.request.num_prompt_tokens)

    def precise_matches(self) -> Mapping[str, int]:
        """Blocks matched on the endpoints the precise index knows (for its speculative
        entries), at their block size."""
        return {name: m.blocks for name, m in self._matches.items() if m.precise}

    def _precise_match(self, endpoint_name: str) -> PrefixMatch | None:
        precise = self.precise
        if precise is None or not precise.index.authoritative(endpoint_name, self.now):
            return None
        block_size = precise.index.block_size(endpoint_name) or precise.default_block_size()
        if block_size not in self._precise_matches:
            hashes = precise.block_hashes(self.request, block_size)
            names = [
                name for name in precise.index.endpoints()
                if precise.index.authoritative(name, self.now)
            ]  # fmt: skip
            self._precise_matches[block_size] = (
                None if hashes is None else (hashes, precise.index.match(hashes, names, self.now))
            )
        entry = self._precise_matches[block_size]
        if entry is None:
            return None
        hashes, matched = entry
        return PrefixMatch(matched.get(endpoint_name, 0), len(hashes), block_size, precise=True)


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

    def bind(self, plugins: Mapping[str, object]) -> None:
        """Resolve references to other plugins once all exist; `ValueError` names the bad
        parameter."""

    def required_profiles(self) -> tuple[str, ...]:
        """The profiles the configuration must define for this handler."""

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

    @property
    def encodes_session_header(self) -> bool:
        """Whether responses must carry the session header this plugin reads back."""

    def remember(self, headers: Mapping[str, str], result: SchedulingResult) -> None: ...
