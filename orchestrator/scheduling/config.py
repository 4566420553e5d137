"""Scheduler configuration: an llm-d `EndpointPickerConfig`-style document, validated.

    apiVersion: llm-d.ai/v1alpha1
    kind: EndpointPickerConfig
    plugins: [{type, name?, parameters?}]
    schedulingProfiles: [{name, plugins: [{pluginRef, weight?}]}]
    saturationDetector: {queueDepthThreshold?, kvCacheUtilThreshold?, ...}   # admission

Defaults follow llm-d's loader (llm-d/llm-d-router: pkg/epp/config/loader/defaults.go): a
plugin's name defaults to its type, a missing weight is 1, a profile without a picker gets a
`max-score-picker`, one profile without a handler gets a `single-profile-handler`, and
profiles named `prefill` and `decode` get tandem's `disagg-profile-handler`. Every error
names the field it is about.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tandem.errors import SchedulerConfigError, field_problems
from tandem.logs import EventLog
from tandem.orchestrator.scheduling.framework import (
    Decider,
    Filter,
    Picker,
    PreciseMatcher,
    PrefixIndexConfig,
    ProfileHandler,
    Scorer,
)
from tandem.orchestrator.scheduling.plugins import builtin_registry
from tandem.orchestrator.scheduling.plugins.max_score_picker import MaxScorePicker, PickerParameters
from tandem.orchestrator.scheduling.plugins.profile_handlers import (
    DeciderRefs,
    DisaggParameters,
    DisaggProfileHandler,
    SingleProfileHandler,
    SingleProfileParameters,
)
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.profile import Profile, WeightedScorer
from tandem.orchestrator.scheduling.registry import PluginRegistry
from tandem.orchestrator.scheduling.saturation import SaturationDetectorConfig
from tandem.orchestrator.scheduling.scheduler import Scheduler

logger = EventLog(__name__)

API_VERSIONS = ("llm-d.ai/v1alpha1", "inference.networking.x-k8s.io/v1alpha1")
IGNORED_SECTIONS = ("dataLayer", "flowControl", "requestHandler", "parser")
KNOWN_FEATURE_GATES = ("flowControl", "haPopulateNonLeaderDatastore")
"""llm-d's gates; accepted and ignored (an unknown gate stops llm-d's EPP, and tandem)."""


class PluginSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    name: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class PluginRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pluginRef: str
    weight: float | None = Field(None, ge=0)


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    plugins: list[PluginRef] = Field(default_factory=list)


class EndpointPickerConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    apiVersion: str = API_VERSIONS[0]
    kind: str = "EndpointPickerConfig"
    featureGates: list[str] = Field(default_factory=list)
    plugins: list[PluginSpec] = Field(default_factory=list)
    schedulingProfiles: list[ProfileSpec] = Field(min_length=1)
    saturationDetector: SaturationDetectorConfig | None = None
    """When the pools count as saturated, for admission control; unset: only the gateway's
    per-endpoint cap on requests in flight."""


def parse_config(document: Mapping[str, Any]) -> EndpointPickerConfig:
    """Validate the document's shape (not yet its plugins)."""
    try:
        config = EndpointPickerConfig.model_validate(dict(document))
    except ValidationError as exc:
        raise SchedulerConfigError(field_problems(exc.errors())) from None
    if config.kind != "EndpointPickerConfig":
        raise SchedulerConfigError(f"kind: must be EndpointPickerConfig, got {config.kind!r}")
    if config.apiVersion not in API_VERSIONS:
        raise SchedulerConfigError(
            f"apiVersion: must be one of {', '.join(API_VERSIONS)}, got {config.apiVersion!r}"
        )
    for position, gate in enumerate(config.featureGates):
        if gate.split("=", 1)[0] not in KNOWN_FEATURE_GATES:
            raise SchedulerConfigError(
                f"featureGates[{position}]: unknown gate {gate!r}; "
                f"known: {', '.join(KNOWN_FEATURE_GATES)}"
            )
    for key in config.model_extra or {}:
        if key not in IGNORED_SECTIONS:
            raise SchedulerConfigError(f"{key}: unknown section")
        logger.warning("scheduler_config_section_ignored", section=key)
    return config


def load_config_file(path: str | Path) -> EndpointPickerConfig:
    """Read and validate a scheduler configuration file."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SchedulerConfigError(f"{path}: cannot read scheduler config: {exc}") from None
    if not isinstance(document, dict):
        raise SchedulerConfigError(f"{path}: expected a YAML mapping at the top level")
    return parse_config(document)


def _instantiate(config: EndpointPickerConfig, registry: PluginRegistry) -> dict[str, object]:
    plugins: dict[str, object] = {}
    for index, spec in enumerate(config.plugins):
        where = f"plugins[{index}]"
        plugin_type = registry.get(spec.type)
        if plugin_type is None:
            known = ", ".join(registry.type_names)
            raise SchedulerConfigError(
                f"{where}.type: unknown plugin {spec.type!r}; known: {known}"
            )
        name = spec.name or spec.type
        if name in plugins:
            raise SchedulerConfigError(f"{where}.name: duplicate plugin name {name!r}")
        try:
            plugins[name] = plugin_type.from_parameters(name, spec.parameters)
        except ValidationError as exc:
            raise SchedulerConfigError(
                field_problems(exc.errors(), f"{where}.parameters.")
            ) from None
    return plugins


def _profile(index: int, spec: ProfileSpec, plugins: Mapping[str, object]) -> Profile:
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    picker: Picker | None = None
    for ref_index, ref in enumerate(spec.plugins):
        where = f"schedulingProfiles[{index}].plugins[{ref_index}].pluginRef"
        plugin = plugins.get(ref.pluginRef)
        if plugin is None:
            raise SchedulerConfigError(f"{where}: no plugin named {ref.pluginRef!r}")
        if isinstance(plugin, Filter):
            filters.append(plugin)
        elif isinstance(plugin, Scorer):
            weight = 1.0 if ref.weight is None else ref.weight
            scorers.append(WeightedScorer(plugin, weight))
        elif isinstance(plugin, Picker):
            if picker is not None:
                raise SchedulerConfigError(f"{where}: profile {spec.name!r} has two pickers")
            picker = plugin
        else:
            raise SchedulerConfigError(
                f"{where}: {ref.pluginRef!r} is not a filter, scorer or picker"
            )
    if picker is None:
        picker = MaxScorePicker(f"{spec.name}-max-score-picker", PickerParameters())
    return Profile(spec.name, tuple(filters), tuple(scorers), picker)


def _handler(profiles: Mapping[str, Profile], plugins: Mapping[str, object]) -> ProfileHandler:
    handlers = [p for p in plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        names = ", ".join(h.name for h in handlers)
        raise SchedulerConfigError(f"plugins: more than one profile handler ({names})")
    if handlers:
        handler = handlers[0]
    elif {"prefill", "decode"} <= set(profiles):
        deciders = [p for p in plugins.values() if isinstance(p, Decider)]
        ref = deciders[0].name if len(deciders) == 1 else None
        handler = DisaggProfileHandler(
            "disagg-profile-handler", DisaggParameters(deciders=DeciderRefs(prefill=ref))
        )
    elif len(profiles) == 1:
        handler = SingleProfileHandler("single-profile-handler", SingleProfileParameters())
    else:
        raise SchedulerConfigError(
            "plugins: several profiles need a profile handler (disagg-profile-handler)"
        )
    try:
        handler.bind(plugins)
    except ValueError as exc:
        raise SchedulerConfigError(f"plugins[{handler.name}].parameters.{exc}") from None
    for name in handler.required_profiles():
        if name not in profiles:
            raise SchedulerConfigError(
                f"schedulingProfiles: handler {handler.name!r} needs a profile named {name!r}"
            )
    return handler


def build_scheduler(
    config: EndpointPickerConfig,
    *,
    registry: PluginRegistry | None = None,
    rng: random.Random | None = None,
    prefix_seed: str = "",
) -> Scheduler:
    """Instantiate the plugins and profiles a configuration describes."""
    plugins = _instantiate(config, registry or builtin_registry())
    profiles: dict[str, Profile] = {}
    for position, spec in enumerate(config.schedulingProfiles):
        if spec.name in profiles:
            raise SchedulerConfigError(
                f"schedulingProfiles[{position}].name: duplicate profile {spec.name!r}"
            )
        profiles[spec.name] = _profile(position, spec, plugins)
    handler = _handler(profiles, plugins)
    producers = [p for p in plugins.values() if isinstance(p, PrefixIndexConfig)]
    if len(producers) > 1:
        raise SchedulerConfigError("plugins: more than one approx-prefix-cache-producer")
    precise = [p for p in plugins.values() if isinstance(p, PreciseMatcher)]
    if len(precise) > 1:
        raise SchedulerConfigError("plugins: more than one precise-prefix-cache-producer")
    if producers:
        index, auto_tune = producers[0].build_index(prefix_seed), producers[0].auto_tune
    else:
        index, auto_tune = PrefixIndex(seed=prefix_seed), True
    return Scheduler(
        profiles, handler, index, rng, plugins=plugins, auto_tune=auto_tune,
        saturation=config.saturationDetector,
    )  # fmt: skip
