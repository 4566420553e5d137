"""Applying a changed configuration file without a restart.

The orchestrator's file (on Kubernetes, a mounted ConfigMap) is re-read every
`reload.interval_s`, together with the scheduler file it names. When the scheduler
configuration changed and is valid, the new scheduler replaces the running one between two
requests; an invalid file is refused with a log line and the running configuration stays.
A changed static `endpoints` list is applied too (pods added, or taken out to drain, as
`tandem up` does when a pod moves between the pools). Changes to anything else (ports,
discovery, scraping) are logged as needing a restart.

Content is compared, not modification times: Kubernetes updates a ConfigMap volume by
swapping a symlink, which leaves the visible files' times unreliable.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from tandem.discovery.endpoints import Endpoint
from tandem.errors import OrchestratorConfigError, SchedulerConfigError
from tandem.logs import EventLog
from tandem.orchestrator.config import (
    SHIPPED_SCHEDULERS,
    OrchestratorConfig,
    load_orchestrator_config,
)
from tandem.orchestrator.scheduling.config import EndpointPickerConfig

logger = EventLog("tandem.reload")


class ConfigReloader:
    """Watches one orchestrator configuration file and applies scheduler changes."""

    def __init__(
        self,
        path: Path,
        running: OrchestratorConfig,
        apply: Callable[[EndpointPickerConfig], None],
        *,
        on_result: Callable[[str], None] | None = None,
        on_endpoints: Callable[[Sequence[Endpoint]], None] | None = None,
    ) -> None:
        """`apply` builds and installs a scheduler; it raises SchedulerConfigError to refuse.
        `on_result` hears "applied" or "rejected" (for metrics); `on_endpoints`, given where
        the endpoints are the file's static list, receives a changed list."""
        self.path = path
        self.started = running
        """What the process runs with, except the scheduler (which reloads)."""
        self.running = running
        """The last valid file read."""
        self._scheduler = running.scheduler_config(path.parent)
        self._apply = apply
        self._on_result = on_result
        self._on_endpoints = on_endpoints
        self._fingerprint = self._read_fingerprint(running)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.running.reload.interval_s)
            self.check()

    def check(self) -> str | None:
        """Look once; returns "applied", "rejected", or None when nothing changed."""
        fingerprint = self._read_fingerprint(self.running)
        if fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            config = load_orchestrator_config(self.path)
            scheduler = config.scheduler_config(self.path.parent)
            if scheduler != self._scheduler:
                self._apply(scheduler)
        except (OrchestratorConfigError, SchedulerConfigError) as exc:
            logger.error(
                "config_reload_rejected",
                path=self.path,
                error=exc,
                note="the running configuration stays",
            )
            return self._result("rejected")
        changed = ["scheduler"] if self._scheduler != scheduler else []
        if self._on_endpoints is not None and config.endpoints != self.running.endpoints:
            self._on_endpoints([entry.endpoint() for entry in config.endpoints])
            changed.append("endpoints")
        self._note_restart_fields(config)
        self.running, self._scheduler = config, scheduler
        if not changed:
            return None
        logger.info("config_reload_applied", path=self.path, changed=",".join(changed))
        return self._result("applied")

    def _result(self, result: str) -> str:
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _note_restart_fields(self, config: OrchestratorConfig) -> None:
        applied = {"scheduler", "endpoints"} if self._on_endpoints else {"scheduler"}
        before = self.started.model_dump(exclude=applied)
        after = config.model_dump(exclude=applied)
        changed = sorted(key for key in after if after[key] != before.get(key))
        if changed:
            logger.warning(
                "config_reload_needs_restart",
                path=self.path,
                fields=",".join(changed),
                note="the running values stay until the orchestrator restarts",
            )

    def _read_fingerprint(self, config: OrchestratorConfig) -> bytes:
        """A digest of the file and of the scheduler file it names (missing files count)."""
        digest = hashlib.sha256()
        files = [self.path]
        if isinstance(config.scheduler, str) and config.scheduler not in SHIPPED_SCHEDULERS:
            files.append(self.path.parent / config.scheduler)
        for file in files:
            try:
                digest.update(file.read_bytes())
            except OSError as exc:
                digest.update(repr(exc).encode())
            digest.update(b"\0")
        return digest.digest()
