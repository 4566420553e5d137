"""The built-in scheduler plugins, registered under llm-d's type names."""

from __future__ import annotations

from tandem.orchestrator.scheduling.plugins.active_request_scorer import ActiveRequestScorer
from tandem.orchestrator.scheduling.plugins.approx_prefix_cache_producer import (
    ApproxPrefixCacheProducer,
)
from tandem.orchestrator.scheduling.plugins.decode_itl_scorer import DecodeItlScorer
from tandem.orchestrator.scheduling.plugins.elastic_pd_decider import ElasticPDDecider
from tandem.orchestrator.scheduling.plugins.kv_cache_utilization_scorer import (
    KVCacheUtilizationScorer,
)
from tandem.orchestrator.scheduling.plugins.label_selector_filter import LabelSelectorFilter
from tandem.orchestrator.scheduling.plugins.load_aware_pd_decider import LoadAwarePDDecider
from tandem.orchestrator.scheduling.plugins.load_aware_scorer import LoadAwareScorer
from tandem.orchestrator.scheduling.plugins.max_score_picker import MaxScorePicker
from tandem.orchestrator.scheduling.plugins.pd_deciders import (
    AlwaysDisaggPDDecider,
    PrefixBasedPDDecider,
)
from tandem.orchestrator.scheduling.plugins.precise_prefix_cache_producer import (
    PrecisePrefixCacheProducer,
)
from tandem.orchestrator.scheduling.plugins.prefix_cache_scorer import PrefixCacheScorer
from tandem.orchestrator.scheduling.plugins.profile_handlers import (
    DisaggProfileHandler,
    SingleProfileHandler,
)
from tandem.orchestrator.scheduling.plugins.queue_scorer import QueueScorer
from tandem.orchestrator.scheduling.plugins.random_picker import RandomPicker
from tandem.orchestrator.scheduling.plugins.role_filters import DecodeFilter, PrefillFilter
from tandem.orchestrator.scheduling.plugins.round_robin_picker import RoundRobinPicker
from tandem.orchestrator.scheduling.plugins.session_affinity_scorer import SessionAffinityScorer
from tandem.orchestrator.scheduling.plugins.token_load_scorer import TokenLoadScorer
from tandem.orchestrator.scheduling.plugins.weighted_random_picker import WeightedRandomPicker
from tandem.orchestrator.scheduling.registry import PluginRegistry


def builtin_registry() -> PluginRegistry:
    """A registry holding every built-in plugin (a new one each call: no shared state)."""
    registry = PluginRegistry()
    for plugin in (
        PrefillFilter, DecodeFilter, PrefixCacheScorer, KVCacheUtilizationScorer, QueueScorer,
        ActiveRequestScorer, LoadAwareScorer, SessionAffinityScorer, MaxScorePicker,
        RandomPicker, WeightedRandomPicker, RoundRobinPicker, DisaggProfileHandler,
        SingleProfileHandler, PrefixBasedPDDecider, AlwaysDisaggPDDecider,
        ApproxPrefixCacheProducer, LoadAwarePDDecider, TokenLoadScorer, DecodeItlScorer,
        PrecisePrefixCacheProducer, ElasticPDDecider,
    ):  # fmt: skip
        registry.register(plugin)
    registry.register(LabelSelectorFilter, "by-label-selector")
    return registry
