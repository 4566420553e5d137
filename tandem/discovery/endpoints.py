"""Endpoints: the model-server pods requests go to, their role label, and where the set of
them comes from (a static list here; Kubernetes in `tandem.discovery.kubernetes`)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

ROLE_LABEL = "llm-d.ai/role"


class Role(enum.StrEnum):
    """Values of the `llm-d.ai/role` label."""

    PREFILL = "prefill"
    DECODE = "decode"
    BOTH = "both"
    PREFILL_DECODE = "prefill-decode"
    ENCODE_PREFILL = "encode-prefill"
    ENCODE_PREFILL_DECODE = "encode-prefill-decode"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A model-server pod the orchestrator can send requests to."""

    name: str
    host: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """host:port, as used in `x-prefiller-host-port` and upstream URLs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def role(self) -> str | None:
        return self.labels.get(ROLE_LABEL)


class EndpointSource(Protocol):
    """Where endpoints come from; calls `on_change` with the full set whenever it changes."""

    async def run(self, on_change: Callable[[Sequence[Endpoint]], None]) -> None: ...


class StaticEndpoints:
    """A fixed list from the configuration file."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)

    async def run(self, on_change: Callable[[Sequence[Endpoint]], None]) -> None:
        on_change(self._endpoints)
