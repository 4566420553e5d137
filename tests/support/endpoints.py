"""Endpoints for scheduling tests that need no running pods."""

from __future__ import annotations

from tandem.discovery.endpoints import ROLE_LABEL, Endpoint


def pool(role: str, count: int, subnet: int) -> list[Endpoint]:
    """`count` endpoints of one `llm-d.ai/role`, named `role-i`, on 127.0.`subnet`.0/24."""
    return [
        Endpoint(f"{role}-{i}", f"127.0.{subnet}.{i + 1}", 8000, {ROLE_LABEL: role})
        for i in range(count)
    ]
