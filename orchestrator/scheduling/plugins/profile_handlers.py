"""Profile handlers: which profiles run, in which order, and what the result is.

`disagg-profile-handler` is tandem's two-pass handler. With `stageOrder: prefill-first`
(tandem's default) it ranks the prefill pool, then the decode pool, then asks the decider;
with `decode-first` (llm-d's default) it ranks the prefill pool only when the decider wants a
remote prefill. The decode pick is the primary target, unless the decider has the prefill pick
serve the request whole (`elastic-pd-decider`): then the prefill pod is, and the request is
local to it. A decode pod that is an aggregated pod (`llm-d.ai/role: both`, no sidecar)
always prefills locally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tandem.discovery.endpoints import Role
from tandem.errors import SchedulingError
from tandem.orchestrator.scheduling.framework import Cycle, Decider, ProfileRunner
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import (
    EndpointView,
    PDDecision,
    ProfileResult,
    SchedulingResult,
)


class ProfileNames(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    decode: str = "decode"
    prefill: str = "prefill"


class DeciderRefs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefill: str | None = None
    """Name of the decider plugin; unset turns disaggregation off."""


class DisaggParameters(PluginParameters):
    profiles: ProfileNames = Field(default_factory=ProfileNames)
    deciders: DeciderRefs = Field(default_factory=DeciderRefs)
    stageOrder: Literal["prefill-first", "decode-first"] = "prefill-first"


def _no_endpoint(pool: str, endpoints: Sequence[EndpointView]) -> SchedulingError:
    return SchedulingError(
        503,
        f"no endpoint in the {pool} pool can take the request "
        f"({len(endpoints)} ready endpoints known in all pools)",
        f"no_{pool}_endpoint",
    )


class DisaggProfileHandler(Plugin):
    type_name = "disagg-profile-handler"
    Parameters = DisaggParameters
    parameters: DisaggParameters
    decider: Decider | None = None

    def bind(self, plugins: Mapping[str, object]) -> None:
        """Resolve the decider reference once all plugins exist."""
        ref = self.parameters.deciders.prefill
        if ref is None:
            return
        decider = plugins.get(ref)
        if not isinstance(decider, Decider):
            raise ValueError(f"deciders.prefill: {ref!r} is not a decider plugin")
        self.decider = decider

    def required_profiles(self) -> tuple[str, ...]:
        return (self.parameters.profiles.decode, self.parameters.profiles.prefill)

    def run(
        self,
        cycle: Cycle,
        profiles: Mapping[str, ProfileRunner],
        endpoints: Sequence[EndpointView],
    ) -> SchedulingResult:
        names = self.parameters.profiles
        prefill_profile = profiles[names.prefill]
        prefill: ProfileResult | None = None
        if self.parameters.stageOrder == "prefill-first":
            prefill = prefill_profile.run(cycle, endpoints)
        decode = profiles[names.decode].run(cycle, endpoints)
        if decode is None:
            raise _no_endpoint("decode", endpoints)
        if decode.best.view.endpoint.role == Role.BOTH:
            return SchedulingResult(decode, prefill, PDDecision.LOCAL, "aggregated_endpoint")
        if self.decider is None:
            return SchedulingResult(decode, prefill, PDDecision.LOCAL, "disaggregation_off")
        decision, reason = self.decider.decide(cycle, decode.best, prefill)
        if decision is PDDecision.WHOLE_ON_PREFILL:
            if prefill is None:
                raise ValueError(f"{reason}: a whole-on-prefill decision without a prefill pick")
            return SchedulingResult(prefill, prefill, PDDecision.LOCAL, reason)
        if decision is PDDecision.DISAGGREGATE and prefill is None:
            if self.parameters.stageOrder == "decode-first":
                prefill = prefill_profile.run(cycle, endpoints)
            if prefill is None:
                return SchedulingResult(decode, None, PDDecision.LOCAL, "no_prefill_endpoint")
        return SchedulingResult(decode, prefill, decision, reason)


class SingleProfileParameters(PluginParameters):
    profile: str | None = None
    """The profile to run; defaults to the only one configured."""


class SingleProfileHandler(Plugin):
    type_name = "single-profile-handler"
    Parameters = SingleProfileParameters
    parameters: SingleProfileParameters

    def bind(self, plugins: Mapping[str, object]) -> None:
        """Nothing to resolve: one profile, no decider."""

    def required_profiles(self) -> tuple[str, ...]:
        return (self.parameters.profile,) if self.parameters.profile else ()

    def run(
        self,
        cycle: Cycle,
        profiles: Mapping[str, ProfileRunner],
        endpoints: Sequence[EndpointView],
    ) -> SchedulingResult:
        name = self.parameters.profile or next(iter(profiles))
        result = profiles[name].run(cycle, endpoints)
        if result is None:
            raise _no_endpoint(name, endpoints)
        return SchedulingResult(result, None, PDDecision.LOCAL, "single_profile")
