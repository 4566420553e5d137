"""Scheduler configurations for tests of the P/D path itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import tandem.orchestrator as orchestrator

CONFIG_DIR = Path(orchestrator.__file__).parent / "configs"


def disaggregating_tandem() -> dict[str, Any]:
    """tandem.yaml with the decider's idle rule off. tandem prefills a prompt on a decode
    pod that decodes nothing, which is every pod of a test that sends one request at a
    time; a test of the P/D path needs the long prompt sent to the prefill pool."""
    document: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "tandem.yaml").read_text())
    [decider] = [p for p in document["plugins"] if p["type"] == "elastic-pd-decider"]
    decider["parameters"]["idleDecodePrefill"] = False
    return document
