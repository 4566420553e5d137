"""The orchestrator's routing core, built from a configuration document as the gateway and
the planner build it: for tests that drive it without HTTP."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tandem.orchestrator.config import parse_orchestrator_config
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import build_scheduler


def router(document: dict[str, Any], clock: Callable[[], float] = lambda: 0.0) -> Router:
    """A router of this configuration, seeded tie-breaks, no endpoints yet."""
    config = parse_orchestrator_config(document)
    return Router(
        config=config,
        scheduler=build_scheduler(config.scheduler_config(), rng=random.Random(1)),
        store=EndpointStore(config.scrape.staleness_s),
        metrics=GatewayMetrics(),
        clock=clock,
    )
