"""`random-picker`: uniformly random endpoints, ignoring scores."""

from __future__ import annotations

from collections.abc import Sequence

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.plugins.max_score_picker import PickerParameters
from tandem.orchestrator.scheduling.registry import Plugin
from tandem.orchestrator.scheduling.types import ScoredEndpoint


class RandomPicker(Plugin):
    type_name = "random-picker"
    Parameters = PickerParameters
    parameters: PickerParameters

    def pick(self, cycle: Cycle, scored: Sequence[ScoredEndpoint]) -> list[ScoredEndpoint]:
        count = min(self.parameters.maxNumOfEndpoints, len(scored))
        return cycle.rng.sample(list(scored), count)
