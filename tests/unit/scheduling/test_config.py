"""Loading an EndpointPickerConfig: shipped files, llm-d's defaults, and errors naming fields."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import tandem.orchestrator as orchestrator
from tandem.errors import SchedulerConfigError
from tandem.orchestrator.scheduling.config import build_scheduler, load_config_file, parse_config
from tandem.orchestrator.scheduling.plugins.active_request_scorer import ActiveRequestScorer
from tandem.orchestrator.scheduling.plugins.label_selector_filter import LabelSelectorFilter
from tandem.orchestrator.scheduling.plugins.max_score_picker import MaxScorePicker
from tandem.orchestrator.scheduling.plugins.pd_deciders import AlwaysDisaggPDDecider
from tandem.orchestrator.scheduling.plugins.profile_handlers import (
    DisaggProfileHandler,
    SingleProfileHandler,
)
from tandem.orchestrator.scheduling.plugins.queue_scorer import QueueScorer
from tandem.orchestrator.scheduling.prefix_index import PrefixIndex
from tandem.orchestrator.scheduling.saturation import SaturationDetectorConfig
from tandem.orchestrator.scheduling.types import PDDecision
from tests.unit.scheduling.support import make_request, make_view, pd_config, scheduler_from

CONFIG_DIR = Path(orchestrator.__file__).parent / "configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
PD_POOL = [
    make_view("p0", "prefill"),
    make_view("p1", "prefill"),
    make_view("d0", "decode"),
    make_view("d1", "decode"),
]


def test_shipped_configs_exist() -> None:
    assert "tandem.yaml" in {path.name for path in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_config_builds_and_schedules(path: Path) -> None:
    scheduler = build_scheduler(load_config_file(path), rng=random.Random(0))

    result = scheduler.schedule(make_request("long prompt " * 400), PD_POOL, now=0.0)

    assert result.decode.best.name in {"d0", "d1"}
    assert {t.name for t in result.prefill_targets} <= {"p0", "p1"}


def base() -> dict[str, Any]:
    """A valid two-profile document the error cases mutate."""
    return pd_config(
        plugins=[
            {"type": "prefill-filter"},
            {"type": "decode-filter"},
            {"type": "queue-scorer"},
            {"type": "max-score-picker"},
        ],
        prefill=[{"pluginRef": "prefill-filter"}, {"pluginRef": "queue-scorer"}],
        decode=[{"pluginRef": "decode-filter"}, {"pluginRef": "queue-scorer", "weight": 2}],
    )


def test_base_document_is_valid() -> None:
    assert set(scheduler_from(base()).profiles) == {"prefill", "decode"}


def edit(path: str, value: Any) -> dict[str, Any]:
    """base() with the value at a dotted path (list indexes as numbers) set; None deletes."""
    document = copy.deepcopy(base())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = document
    for part in parents:
        target = target[part]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return document


ERROR_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-type": (
        edit("plugins.2", {"type": "queue-scorr"}),
        "plugins[2].type: unknown plugin 'queue-scorr'; known: ",
    ),
    "unknown-parameter": (
        edit("plugins.0", {"type": "queue-scorer", "parameters": {"foo": 1}}),
        "plugins[0].parameters.foo",
    ),
    "bad-parameter-value": (
        edit("plugins.3", {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": 0}}),
        "plugins[3].parameters.maxNumOfEndpoints",
    ),
    "bad-parameter-type": (
        edit("plugins.3", {"type": "max-score-picker", "parameters": {"maxNumOfEndpoints": "x"}}),
        "plugins[3].parameters.maxNumOfEndpoints",
    ),
    "bad-nested-parameter": (
        edit(
            "plugins.0",
            {
                "type": "label-selector-filter",
                "parameters": {"matchExpressions": [{"key": "k", "operator": "Equals"}]},
            },
        ),
        "plugins[0].parameters.matchExpressions[0].operator",
    ),
    "non-cached-tokens-zero": (
        edit(
            "plugins.3",
            {"type": "prefix-based-pd-decider", "parameters": {"nonCachedTokens": 0}},
        ),
        "plugins[3].parameters.nonCachedTokens",
    ),
    "missing-plugin-ref": (
        edit("schedulingProfiles.0.plugins.1.pluginRef", "kv-scorer"),
        "schedulingProfiles[0].plugins[1].pluginRef: no plugin named 'kv-scorer'",
    ),
    "duplicate-name": (
        edit("plugins.2", {"type": "kv-cache-utilization-scorer", "name": "prefill-filter"}),
        "plugins[2].name: duplicate plugin name 'prefill-filter'",
    ),
    "duplicate-type-without-names": (
        edit("plugins.2", {"type": "decode-filter"}),
        "plugins[2].name: duplicate plugin name 'decode-filter'",
    ),
    "two-pickers": (
        {
            **base(),
            "plugins": [*base()["plugins"], {"type": "random-picker"}],
            "schedulingProfiles": [
                base()["schedulingProfiles"][0],
                {
                    "name": "decode",
                    "plugins": [
                        {"pluginRef": "decode-filter"},
                        {"pluginRef": "max-score-picker"},
                        {"pluginRef": "random-picker"},
                    ],
                },
            ],
        },
        "schedulingProfiles[1].plugins[2].pluginRef: profile 'decode' has two pickers",
    ),
    "decider-in-profile": (
        {
            **base(),
            "plugins": [*base()["plugins"], {"type": "always-disagg-pd-decider"}],
            "schedulingProfiles": [
                base()["schedulingProfiles"][0],
                {"name": "decode", "plugins": [{"pluginRef": "always-disagg-pd-decider"}]},
            ],
        },
        "schedulingProfiles[1].plugins[0].pluginRef: 'always-disagg-pd-decider' is not a filter",
    ),
    "negative-weight": (
        edit("schedulingProfiles.1.plugins.1.weight", -1),
        "schedulingProfiles[1].plugins[1].weight",
    ),
    "wrong-kind": (edit("kind", "InferencePool"), "kind: must be EndpointPickerConfig"),
    "wrong-api-version": (edit("apiVersion", "llm-d.ai/v2"), "apiVersion: must be one of"),
    "missing-profiles": (edit("schedulingProfiles", None), "schedulingProfiles: Field required"),
    "empty-profiles": (edit("schedulingProfiles", []), "schedulingProfiles: "),
    "unknown-section": (edit("schedulingProfile", []), "schedulingProfile: unknown section"),
    "unknown-plugin-field": (
        edit("plugins.2", {"type": "queue-scorer", "params": {}}),
        "plugins[2].params",
    ),
    "unknown-ref-field": (
        edit("schedulingProfiles.0.plugins.1", {"pluginRef": "queue-scorer", "wieght": 2}),
        "schedulingProfiles[0].plugins[1].wieght",
    ),
    "duplicate-profile": (
        edit("schedulingProfiles.1.name", "prefill"),
        "schedulingProfiles[1].name: duplicate profile 'prefill'",
    ),
    "decider-ref-not-a-decider": (
        edit(
            "plugins.3",
            {
                "type": "disagg-profile-handler",
                "parameters": {"deciders": {"prefill": "queue-scorer"}},
            },
        ),
        "deciders.prefill: 'queue-scorer' is not a decider plugin",
    ),
    "handler-profile-missing": (
        edit(
            "plugins.3",
            {"type": "disagg-profile-handler", "parameters": {"profiles": {"decode": "dec"}}},
        ),
        "schedulingProfiles: handler 'disagg-profile-handler' needs a profile named 'dec'",
    ),
    "two-handlers": (
        {
            **base(),
            "plugins": [
                *base()["plugins"],
                {"type": "disagg-profile-handler"},
                {"type": "single-profile-handler"},
            ],
        },
        "plugins: more than one profile handler",
    ),
    "several-profiles-no-handler": (
        {
            **base(),
            "schedulingProfiles": [
                {"name": "a", "plugins": [{"pluginRef": "decode-filter"}]},
                {"name": "b", "plugins": [{"pluginRef": "decode-filter"}]},
            ],
        },
        "several profiles need a profile handler",
    ),
}


@pytest.mark.parametrize(("document", "message"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_name_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(SchedulerConfigError, match=re.escape(message)):
        scheduler_from(document)


def test_unknown_type_lists_known_types() -> None:
    with pytest.raises(SchedulerConfigError) as caught:
        scheduler_from(edit("plugins.2", {"type": "nope"}))

    known = str(caught.value).split("known: ", 1)[1].split(", ")
    assert {"queue-scorer", "prefix-cache-scorer", "by-label-selector", "max-score-picker"} <= set(
        known
    )


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.yaml"
    path.write_text("- just\n- a list\n")

    with pytest.raises(SchedulerConfigError, match=re.escape(str(path))):
        load_config_file(path)
    with pytest.raises(SchedulerConfigError, match=re.escape(str(tmp_path / "missing.yaml"))):
        load_config_file(tmp_path / "missing.yaml")


def test_old_api_version_and_ignored_sections_load() -> None:
    document = {
        **base(),
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "dataLayer": {"injectDefaults": True},
        "flowControl": {},
    }

    assert set(parse_config(document).model_extra or {}) == {"dataLayer", "flowControl"}
    assert set(scheduler_from(document).profiles) == {"prefill", "decode"}


def test_name_defaults_to_type_and_weight_to_one() -> None:
    scheduler = scheduler_from(base())

    prefill_scorers = scheduler.profiles["prefill"].scorers
    decode_scorers = scheduler.profiles["decode"].scorers
    assert {"prefill-filter", "decode-filter", "queue-scorer", "max-score-picker"} <= set(
        scheduler.plugins
    )
    assert isinstance(scheduler.plugins["queue-scorer"], QueueScorer)
    assert [(w.scorer.name, w.weight) for w in prefill_scorers] == [("queue-scorer", 1.0)]
    assert [(w.scorer.name, w.weight) for w in decode_scorers] == [("queue-scorer", 2.0)]
    assert prefill_scorers[0].scorer is decode_scorers[0].scorer


def test_explicit_name_is_kept() -> None:
    document = edit("plugins.2", {"type": "queue-scorer", "name": "q"})
    document["schedulingProfiles"][0]["plugins"][1]["pluginRef"] = "q"
    document["schedulingProfiles"][1]["plugins"][1]["pluginRef"] = "q"

    scheduler = scheduler_from(document)

    assert "queue-scorer" not in scheduler.plugins
    assert scheduler.profiles["decode"].scorers[0].scorer.name == "q"


def test_profile_without_picker_gets_max_score_picker() -> None:
    scheduler = scheduler_from(base())

    picker = scheduler.profiles["prefill"].picker
    assert isinstance(picker, MaxScorePicker)
    assert picker.parameters.maxNumOfEndpoints == 1
    assert scheduler.plugins["max-score-picker"] is not picker


def test_one_profile_gets_single_profile_handler() -> None:
    document = {
        "apiVersion": "llm-d.ai/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [{"type": "active-request-scorer"}],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "active-request-scorer"}]}
        ],
    }

    scheduler = scheduler_from(document)
    result = scheduler.schedule(
        make_request(), [make_view("a", "both", in_flight=3), make_view("b", "both")], now=0.0
    )

    assert isinstance(scheduler.handler, SingleProfileHandler)
    assert isinstance(scheduler.profiles["default"].scorers[0].scorer, ActiveRequestScorer)
    assert (result.decode.best.name, result.reason) == ("b", "single_profile")


def test_prefill_and_decode_profiles_get_disagg_handler_wired_to_the_decider() -> None:
    document = edit("plugins.3", {"type": "always-disagg-pd-decider", "name": "pd"})

    scheduler = scheduler_from(document)

    handler = scheduler.handler
    assert isinstance(handler, DisaggProfileHandler)
    assert handler.decider is scheduler.plugins["pd"]
    assert isinstance(handler.decider, AlwaysDisaggPDDecider)
    result = scheduler.schedule(make_request("q"), PD_POOL, now=0.0)
    assert (result.decision, result.reason) == (PDDecision.DISAGGREGATE, "always")


def test_prefill_and_decode_profiles_without_a_decider_do_not_disaggregate() -> None:
    scheduler = scheduler_from(base())

    result = scheduler.schedule(make_request("q" * 4000), PD_POOL, now=0.0)

    assert isinstance(scheduler.handler, DisaggProfileHandler)
    assert scheduler.handler.decider is None
    assert (result.decision, result.reason) == (PDDecision.LOCAL, "disaggregation_off")


def test_by_label_selector_alias_loads() -> None:
    document = edit(
        "plugins.0", {"type": "by-label-selector", "parameters": {"matchLabels": {"gpu": "h100"}}}
    )
    document["plugins"][0]["name"] = "prefill-filter"

    scheduler = scheduler_from(document)

    assert isinstance(scheduler.plugins["prefill-filter"], LabelSelectorFilter)


@pytest.mark.parametrize(
    ("parameters", "block_size_tokens", "capacity"),
    [
        pytest.param({}, 64, 31250, id="defaults"),
        pytest.param({"blockSizeTokens": 16}, 64, 31250, id="floored-to-64"),
        pytest.param({"blockSizeTokens": 128, "lruCapacityPerServer": 10}, 128, 10, id="custom"),
    ],
)
def test_approx_prefix_cache_producer_sizes_the_index(
    parameters: dict[str, Any], block_size_tokens: int, capacity: int
) -> None:
    document = copy.deepcopy(base())
    document["plugins"].append({"type": "approx-prefix-cache-producer", "parameters": parameters})

    index = scheduler_from(document).prefix_index

    assert isinstance(index, PrefixIndex)
    assert (index.block_size_tokens, index.default_capacity) == (block_size_tokens, capacity)


@pytest.mark.parametrize("variant", ["tandem-tail-itl.yaml", "tandem-gpt-oss-h200.yaml"])
def test_tandem_variants_differ_from_tandem_yaml_only_in_the_decider_s_parameters(
    variant: str,
) -> None:
    """The variants are copies for operators to read whole; they must not drift."""

    def without_decider_parameters(name: str) -> Any:
        document = yaml.safe_load((CONFIG_DIR / name).read_text())
        for plugin in document["plugins"]:
            if plugin["type"] == "elastic-pd-decider":
                plugin.pop("parameters")
        return document

    assert without_decider_parameters(variant) == without_decider_parameters("tandem.yaml")


def test_tandem_admission_is_tandem_tail_itl_with_a_saturation_detector() -> None:
    admission = yaml.safe_load((CONFIG_DIR / "tandem-admission.yaml").read_text())
    detector = admission.pop("saturationDetector")
    assert admission == yaml.safe_load((CONFIG_DIR / "tandem-tail-itl.yaml").read_text())
    assert scheduler_from({**admission, "saturationDetector": detector}).saturation == (
        SaturationDetectorConfig.model_validate(detector)
    )


def test_saturation_detector_parameters_are_checked_by_name() -> None:
    with pytest.raises(SchedulerConfigError, match=r"saturationDetector\.queueDepthThreshold"):
        scheduler_from({**base(), "saturationDetector": {"queueDepthThreshold": 0}})
    with pytest.raises(SchedulerConfigError, match=r"saturationDetector\.maxInFlight"):
        scheduler_from({**base(), "saturationDetector": {"maxInFlight": 3}})


def test_tandem_precise_is_tandem_yaml_with_the_precise_index() -> None:
    precise = yaml.safe_load((CONFIG_DIR / "tandem-precise.yaml").read_text())
    plugins = [p for p in precise["plugins"] if p["type"] != "precise-prefix-cache-producer"]
    assert {**precise, "plugins": plugins} == yaml.safe_load(
        (CONFIG_DIR / "tandem.yaml").read_text()
    )
    assert scheduler_from(precise).precise is not None


def test_one_precise_index_at_most() -> None:
    document = copy.deepcopy(base())
    document["plugins"] += [
        {"type": "precise-prefix-cache-producer", "name": "a"},
        {"type": "precise-prefix-cache-producer", "name": "b"},
    ]
    with pytest.raises(SchedulerConfigError, match="more than one precise-prefix-cache-producer"):
        scheduler_from(document)
