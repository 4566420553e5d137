"""`round-robin-picker`: endpoints in turn, ignoring scores (a Kubernetes Service's spread).

This is the baseline the published llm-d results compare against; it is deterministic so a
benchmark's round-robin run is repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.plugins.max_score_picker import PickerParameters
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import ScoredEndpoint


class RoundRobinPicker(Plugin):
    type_name = "round-robin-picker"
    Parameters = PickerParameters
    parameters: PickerParameters

    def __init__(self, name: str, parameters: PluginParameters) -> None:
        super().__init__(name, parameters)
        self._next = 0

    def pick(self, cycle: Cycle, scored: Sequence[ScoredEndpoint]) -> list[ScoredEndpoint]:
        ordered = sorted(scored, key=lambda candidate: candidate.name)
        if not ordered:
            return []
        start = self._next % len(ordered)
        self._next += 1
        rotated = ordered[start:] + ordered[:start]
        return rotated[: self.parameters.maxNumOfEndpoints]
