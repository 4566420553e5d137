"""A scheduling profile: filters, weighted scorers and a picker, run in that order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tandem.orchestrator.scheduling.framework import Cycle, Filter, Picker, Scorer
from tandem.orchestrator.scheduling.types import EndpointView, ProfileResult, ScoredEndpoint


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float


@dataclass(frozen=True, slots=True)
class Profile:
    """One pass of the scheduler over the endpoints."""

    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker

    def run(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> ProfileResult | None:
        """Ranked picks, or None when the filters leave no endpoint."""
        candidates = list(endpoints)
        for endpoint_filter in self.filters:
            candidates = endpoint_filter.filter(cycle, candidates)
            if not candidates:
                return None
        totals = dict.fromkeys((view.name for view in candidates), 0.0)
        raw: dict[str, dict[str, float]] = {}
        for weighted in self.scorers:
            scores = weighted.scorer.score(cycle, candidates)
            raw[weighted.scorer.name] = dict(scores)
            for name in totals:
                # Scores are clamped to [0, 1]; the total is a plain weighted sum (llm-d).
                totals[name] += weighted.weight * min(1.0, max(0.0, scores.get(name, 0.0)))
        scored = [ScoredEndpoint(view, totals[view.name]) for view in candidates]
        picks = self.picker.pick(cycle, scored)
        if not picks:
            return None
        return ProfileResult(self.name, tuple(picks), raw)
