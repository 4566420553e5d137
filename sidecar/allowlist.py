"""Which prefill endpoints the sidecar may send prefill requests to.

`x-prefiller-host-port` arrives from the network, so a target is only contacted when it is a
known prefill endpoint, matched on host and port together (llm-d's allowlist checks only the
host: llm-d/llm-d-router#979). The static list serves local runs; on Kubernetes the same
discovery as the orchestrator's keeps `DiscoveredAllowlist` up to date.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tandem.discovery.endpoints import Endpoint, Role

PREFILL_CAPABLE = frozenset(
    {None, Role.PREFILL, Role.BOTH, Role.PREFILL_DECODE, Role.ENCODE_PREFILL,
     Role.ENCODE_PREFILL_DECODE}
)  # fmt: skip
"""Roles whose pods run prefills; an unlabelled pod counts when the selector picked it."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> HostPort:
        """'host:port' or '[v6]:port'; raises ValueError with what is wrong."""
        text = value.strip()
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"not a host:port: {value!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError(f"port out of range in {value!r}")
        return cls(host.lower(), number)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class PrefillAllowlist(Protocol):
    def allows(self, target: HostPort) -> bool: ...


class StaticAllowlist:
    """A fixed set of prefill endpoints."""

    def __init__(self, targets: Iterable[HostPort]) -> None:
        self._targets = frozenset(targets)

    def allows(self, target: HostPort) -> bool:
        return target in self._targets

    def __len__(self) -> int:
        return len(self._targets)


class DiscoveredAllowlist:
    """The prefill-capable endpoints discovery last reported; empty until it reports."""

    def __init__(self) -> None:
        self._targets: frozenset[HostPort] = frozenset()

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._targets = frozenset(
            HostPort(endpoint.host.lower(), endpoint.port)
            for endpoint in endpoints
            if endpoint.role in PREFILL_CAPABLE
        )

    def allows(self, target: HostPort) -> bool:
        return target in self._targets

    def __len__(self) -> int:
        return len(self._targets)
