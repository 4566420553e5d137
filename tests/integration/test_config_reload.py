"""Scheduler configuration changes apply without a restart; invalid ones are refused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import CONFIG_DIR, load_orchestrator_config
from tandem.orchestrator.gateway import Gateway
from tandem.orchestrator.reload import ConfigReloader
from tandem.orchestrator.scheduling.config import (
    EndpointPickerConfig,
    build_scheduler,
    load_config_file,
)
from tests.support.servers import free_port, parse_samples, serve, wait_until

TANDEM = yaml.safe_load((CONFIG_DIR / "tandem.yaml").read_text())


def write_config(folder: Path, scheduler: object, **extra: object) -> Path:
    """orchestrator.yaml naming scheduler.yaml (as the Helm chart's ConfigMap does), each
    replaced whole, as Kubernetes updates a mounted ConfigMap."""
    text = scheduler if isinstance(scheduler, str) else yaml.safe_dump(scheduler)
    replace_file(folder / "scheduler.yaml", text)
    path = folder / "orchestrator.yaml"
    document = {"scheduler": "scheduler.yaml", "reload": {"interval_s": 0.1}, **extra}
    replace_file(path, yaml.safe_dump(document))
    return path


def replace_file(path: Path, text: str) -> None:
    staged = path.with_suffix(".staged")
    staged.write_text(text)
    staged.replace(path)


def reweighted(weight: float) -> dict[str, object]:
    """tandem.yaml with the first scorer of every profile at another weight."""
    document: dict[str, Any] = yaml.safe_load(yaml.safe_dump(TANDEM))
    for profile in document["schedulingProfiles"]:
        for ref in profile["plugins"]:
            if "weight" in ref:
                ref["weight"] = weight
                break
    return document


class Applied:
    def __init__(self) -> None:
        self.configs: list[EndpointPickerConfig] = []

    def __call__(self, config: EndpointPickerConfig) -> None:
        build_scheduler(config)  # what the gateway does; raises to refuse
        self.configs.append(config)


def reloader_for(path: Path) -> tuple[ConfigReloader, Applied, list[str]]:
    applied, results = Applied(), list[str]()
    reloader = ConfigReloader(
        path, load_orchestrator_config(path), applied, on_result=results.append
    )
    return reloader, applied, results


def test_an_unchanged_file_changes_nothing(tmp_path: Path) -> None:
    reloader, applied, results = reloader_for(write_config(tmp_path, TANDEM))

    assert reloader.check() is None
    assert (applied.configs, results) == ([], [])


def test_a_valid_scheduler_change_is_applied(tmp_path: Path) -> None:
    path = write_config(tmp_path, TANDEM)
    reloader, applied, results = reloader_for(path)

    write_config(tmp_path, reweighted(7.0))

    assert reloader.check() == "applied"
    assert results == ["applied"]
    [config] = applied.configs
    weights = [ref.weight for profile in config.schedulingProfiles for ref in profile.plugins]
    assert 7.0 in weights
    assert reloader.check() is None  # applied once


@pytest.mark.parametrize(
    "broken",
    [
        "schedulingProfiles: [",  # not YAML
        yaml.safe_dump({**TANDEM, "plugins": [{"type": "no-such-plugin"}]}),
        yaml.safe_dump({**TANDEM, "schedulingProfiles": []}),
    ],
    ids=["yaml", "unknown-plugin", "no-profiles"],
)
def test_an_invalid_change_is_refused_and_the_running_one_stays(
    tmp_path: Path, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, TANDEM)
    reloader, applied, results = reloader_for(path)

    write_config(tmp_path, broken)
    with caplog.at_level(logging.ERROR, logger="tandem.reload"):
        outcome = reloader.check()

    assert outcome == "rejected"
    assert applied.configs == []
    assert "config_reload_rejected" in caplog.text
    assert "the running configuration stays" in caplog.text
    assert reloader.check() is None  # the same broken file is reported once

    write_config(tmp_path, reweighted(4.5))  # fixed: applies
    assert reloader.check() == "applied"
    assert results == ["rejected", "applied"]


def test_other_changes_are_logged_as_needing_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, TANDEM)
    reloader, applied, _ = reloader_for(path)

    write_config(tmp_path, TANDEM, gateway={"port": 9999})
    with caplog.at_level(logging.WARNING, logger="tandem.reload"):
        outcome = reloader.check()

    assert outcome is None
    assert applied.configs == []
    assert "config_reload_needs_restart" in caplog.text
    assert "gateway" in caplog.text


def test_the_running_orchestrator_swaps_its_scheduler_and_keeps_the_prefix_index(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, TANDEM)
    app = create_app(load_orchestrator_config(path), config_path=path)

    with serve(app, free_port()) as url:
        gateway: Gateway = app.state.gateway
        first = gateway.router.scheduler
        first.prefix_index.record("pod-a", [1, 2, 3])

        write_config(tmp_path, reweighted(5.0))
        assert wait_until(lambda: gateway.router.scheduler is not first, timeout_s=10)
        second = gateway.router.scheduler
        write_config(tmp_path, "plugins: [")
        assert wait_until(lambda: rejected(url) == 1, timeout_s=10)
        write_config(tmp_path, load_round_robin())
        assert wait_until(lambda: gateway.router.scheduler is not second, timeout_s=10)
        metrics = parse_samples(httpx.get(f"{url}/metrics").text)

    assert second.prefix_index is first.prefix_index  # same hashing: cache knowledge kept
    assert second.prefix_index.match([1, 2, 3], "pod-a") == 3
    assert metrics["tandem_config_reloads_total{result=applied}"] == 2
    assert metrics["tandem_config_reloads_total{result=rejected}"] == 1


def rejected(url: str) -> float:
    samples = parse_samples(httpx.get(f"{url}/metrics").text)
    return samples.get("tandem_config_reloads_total{result=rejected}", 0.0)


def load_round_robin() -> dict[str, object]:
    load_config_file(CONFIG_DIR / "round-robin.yaml")  # it is a valid config
    document: dict[str, object] = yaml.safe_load((CONFIG_DIR / "round-robin.yaml").read_text())
    return document


def test_a_changed_static_endpoint_list_is_applied_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pod = {"name": "decode-0", "host": "127.0.0.1", "port": 8200, "role": "decode"}
    path = write_config(tmp_path, TANDEM, endpoints=[pod])
    applied, seen = Applied(), list[list[str]]()
    reloader = ConfigReloader(
        path, load_orchestrator_config(path), applied,
        on_endpoints=lambda endpoints: seen.append([e.name for e in endpoints]),
    )  # fmt: skip

    other = {"name": "decode-1", "host": "127.0.0.1", "port": 8202, "role": "decode"}
    write_config(tmp_path, TANDEM, endpoints=[pod, other])
    with caplog.at_level(logging.WARNING, logger="tandem.reload"):
        assert reloader.check() == "applied"
    write_config(tmp_path, TANDEM, endpoints=[other])
    assert reloader.check() == "applied"

    assert seen == [["decode-0", "decode-1"], ["decode-1"]]
    assert applied.configs == []  # the scheduler did not change
    assert "config_reload_needs_restart" not in caplog.text
