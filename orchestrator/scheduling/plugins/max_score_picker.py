"""`max-score-picker`: the highest total scores, ties broken at random.

Candidates are shuffled, then stably sorted by score, so equal scores come out in random
order (llm-d/llm-d-router: picker/maxscore); `maxNumOfEndpoints` are kept, best first.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import ScoredEndpoint


class PickerParameters(PluginParameters):
    maxNumOfEndpoints: int = Field(1, ge=1)


class MaxScorePicker(Plugin):
    type_name = "max-score-picker"
    Parameters = PickerParameters
    parameters: PickerParameters

    def pick(self, cycle: Cycle, scored: Sequence[ScoredEndpoint]) -> list[ScoredEndpoint]:
        shuffled = list(scored)
        cycle.rng.shuffle(shuffled)
        shuffled.sort(key=lambda candidate: candidate.score, reverse=True)
        return shuffled[: self.parameters.maxNumOfEndpoints]
