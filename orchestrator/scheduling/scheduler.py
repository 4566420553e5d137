"""The scheduler: one object the gateway, the gRPC faces and the planner all call."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence

from tandem.orchestrator.scheduling.framework import (
    Cycle,
    PreciseMatcher,
    ProfileHandler,
    SessionRecorder,
)
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.profile import Profile
from tandem.orchestrator.scheduling.saturation import SaturationDetectorConfig
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    SchedulingRequest,
    SchedulingResult,
)


class Scheduler:
    """Runs a profile handler over its profiles and keeps the prefix index up to date."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        handler: ProfileHandler,
        prefix_index: PrefixIndex,
        rng: random.Random | None = None,
        *,
        plugins: Mapping[str, object] | None = None,
        auto_tune: bool = True,
        saturation: SaturationDetectorConfig | None = None,
    ) -> None:
        self.profiles = dict(profiles)
        self.handler = handler
        self.prefix_index = prefix_index
        self.plugins = dict(plugins or {})
        self.auto_tune = auto_tune
        self.saturation = saturation
        self._rng = rng or random.Random()
        self._recorders = [p for p in self.plugins.values() if isinstance(p, SessionRecorder)]
        self.encodes_sessions = any(r.encodes_session_header for r in self._recorders)
        """Whether responses must carry the session header an affinity plugin reads back."""
        precise = [p for p in self.plugins.values() if isinstance(p, PreciseMatcher)]
        self.precise: PreciseMatcher | None = precise[0] if precise else None
        """The KV-event index, when configured; its subscriptions follow the endpoints."""

    def schedule(
        self,
        request: SchedulingRequest,
        endpoints: Sequence[EndpointView],
        now: float,
        *,
        record: bool = True,
    ) -> SchedulingResult:
        """Pick endpoints for a request; raises SchedulingError when none can take it.

        With `record` (a request about to be sent) the picks are remembered as holding the
        prompt's prefix; without, it is a look at where the request would go."""
        cycle = Cycle(request, now, self._rng, self.prefix_index, self.precise)
        result = self.handler.run(cycle, self.profiles, endpoints)
        targets = result.prefill_targets
        prefills_on = targets[0].name if targets else result.decode.best.name
        uncached = request.num_prompt_tokens - cycle.matched_tokens(prefills_on)
        result = dataclasses.replace(result, uncached_tokens=uncached)
        if record:
            self._record(cycle, result)
        return result

    def endpoint_capacity(self, endpoint_name: str, kv_tokens: int) -> None:
        """Bound the prefix index's entries for an endpoint by its KV capacity (autoTune)."""
        if self.auto_tune and kv_tokens > 0:
            blocks = kv_tokens // self.prefix_index.block_size_tokens
            self.prefix_index.set_capacity(endpoint_name, blocks)

    def inherit(self, previous: Scheduler) -> bool:
        """Take over what `previous` learnt about the pods' caches, when this scheduler's
        index hashes prompts the same way (a reloaded configuration that changed weights
        must not start from an empty index). Returns whether it did."""
        if self.precise is not None and previous.precise is not None:
            self.precise.inherit(previous.precise)
        if not self.prefix_index.hashes_like(previous.prefix_index):
            return False
        self.prefix_index = previous.prefix_index
        return True

    def forget_endpoint(self, endpoint_name: str) -> None:
        self.prefix_index.forget(endpoint_name)
        if self.precise is not None:
            self.precise.index.remove_endpoint(endpoint_name)

    def _record(self, cycle: Cycle, result: SchedulingResult) -> None:
        """The chosen endpoints will hold the prompt's prefix (llm-d's PreRequest)."""
        decode = result.decode.best.name
        for recorder in self._recorders:
            recorder.remember(cycle.request.headers, result)
        if self.precise is not None:
            targets = result.prefill_targets
            holders = [decode, targets[0].name] if targets else [decode]
            self.precise.speculate(cycle.request, holders, cycle.precise_matches(), cycle.now)
        hashes = cycle.block_hashes
        if not hashes:
            return
        self.prefix_index.record(decode, hashes)
        targets = result.prefill_targets
        if targets:
            self.prefix_index.record(targets[0].name, hashes)
