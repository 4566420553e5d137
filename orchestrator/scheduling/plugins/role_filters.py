"""`prefill-filter` and `decode-filter`: keep endpoints by their `llm-d.ai/role` label.

The accepted roles are llm-d's (llm-d/llm-d-router: filter/bylabel/roles.go): a decoder may
also be an aggregated pod, and an unlabelled pod counts as a decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tandem.discovery.endpoints import Role
from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin
from tandem.orchestrator.scheduling.types import EndpointView


class _RoleFilter(Plugin):
    roles: ClassVar[frozenset[str]]
    allows_unlabelled: ClassVar[bool]

    def filter(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> list[EndpointView]:
        return [
            view
            for view in endpoints
            if (view.endpoint.role in self.roles)
            or (view.endpoint.role is None and self.allows_unlabelled)
        ]


class PrefillFilter(_RoleFilter):
    type_name = "prefill-filter"
    roles = frozenset(
        {Role.PREFILL, Role.ENCODE_PREFILL, Role.PREFILL_DECODE, Role.BOTH,
         Role.ENCODE_PREFILL_DECODE}
    )  # fmt: skip
    allows_unlabelled = False


class DecodeFilter(_RoleFilter):
    type_name = "decode-filter"
    roles = frozenset({Role.DECODE, Role.PREFILL_DECODE, Role.BOTH, Role.ENCODE_PREFILL_DECODE})
    allows_unlabelled = True
