"""`label-selector-filter` (alias `by-label-selector`): Kubernetes-style label selection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView


class LabelRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values != bool(self.values):
            raise ValueError(
                f"operator {self.operator} {'needs' if needs_values else 'takes no'} values"
            )
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = labels.get(self.key) in self.values
        return inside if self.operator == "In" else not inside


class LabelSelectorParameters(PluginParameters):
    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: tuple[LabelRequirement, ...] = ()


class LabelSelectorFilter(Plugin):
    type_name = "label-selector-filter"
    Parameters = LabelSelectorParameters
    parameters: LabelSelectorParameters

    def filter(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        return [view for view in endpoints if self._selects(view.endpoint.labels)]

    def _selects(self, labels: Mapping[str, str]) -> bool:
        wanted = self.parameters.matchLabels
        if any(labels.get(key) != value for key, value in wanted.items()):
            return False
        return all(req.matches(labels) for req in self.parameters.matchExpressions)
