"""`weighted-random-picker`: random endpoints, more likely the higher their score.

Weighted sampling without replacement by key U^(1/score) (Efraimidis-Spirakis), highest key
first; when every score is 0 the choice is uniform (llm-d/llm-d-router: picker/weightedrandom).
"""

from __future__ import annotations

from collections.abc import Sequence

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.plugins.max_score_picker import PickerParameters
from tandem.orchestrator.scheduling.registry import Plugin
from tandem.orchestrator.scheduling.types import ScoredEndpoint


class WeightedRandomPicker(Plugin):
    type_name = "weighted-random-picker"
    Parameters = PickerParameters
    parameters: PickerParameters

    def pick(self, cycle: Cycle, scored: Sequence[ScoredEndpoint]) -> list[ScoredEndpoint]:
        count = min(self.parameters.maxNumOfEndpoints, len(scored))
        if all(candidate.score <= 0 for candidate in scored):
            return cycle.rng.sample(list(scored), count)
        keyed = [
            (cycle.rng.random() ** (1.0 / c.score) if c.score > 0 else -1.0, c) for c in scored
        ]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [candidate for _, candidate in keyed[:count]]
