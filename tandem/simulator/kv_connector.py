"""The simulated pod's KV connector: vLLM NixlConnector's P/D contract, both sides.

Any pod can produce or consume; the request's `kv_transfer_params` decide (as in vLLM, where
`kv_role` is only a placeholder).

Producer (prefill) side, in call order:
  1. A request arrives with `kv_transfer_params.do_remote_decode = true`. The engine prefills
     it as usual and samples one token.
  2. When it finishes by length or stop, `HeldKV.hold` pins its KV blocks under the request's
     internal id with a lease of `kv_lease_duration` seconds, and `producer_params` builds the
     `kv_transfer_params` returned in the HTTP response. Any other finish (abort, error) frees
     the blocks and returns null.
  3. The consumer reads the blocks over the side channel (`HeldKV.read`), heartbeats extend
     the lease (`HeldKV.heartbeat`), and its "done" notification frees them
     (`HeldKV.release`). `HeldKV.expire` frees whatever outlived its lease.

Consumer (decode) side, in call order:
  1. A request arrives with `do_remote_prefill = true` and the `remote_*` fields
     (`RemotePrefill.parse`; incomplete params are ignored with a warning, like vLLM, and the
     request prefills locally).
  2. The engine's scheduler allocates blocks for the prompt, counts any local prefix-cache hit,
     and emits a `RemoteLoad` job instead of computing.
  3. The pod's shell reads the blocks from the producer through a `KVTransport`, waits the
     modelled transfer time, and reports back with `Engine.finish_remote_load`.
  4. On success the loaded tokens count as computed (`external_kv_transfer`); on failure the
     `kv_load_failure_policy` decides: `fail` ends the request with finish reason "error",
     `recompute` prefills locally.

Field names, defaults and semantics follow vLLM 0.33 (vllm-project/vllm:
vllm/distributed/kv_transfer/kv_connector/v1/nixl/, docs/design/kv_cache_lease.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from tandem.errors import KVReadError
from tandem.pods.launch import DEFAULT_KV_LEASE_DURATION_S
from tandem.simulator.block_pool import KVBlock

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """Consumer-side view of a producer's `kv_transfer_params`: where the KV blocks are."""

    remote_engine_id: str
    remote_request_id: str
    remote_host: str
    remote_port: int
    remote_block_ids: tuple[tuple[int, ...], ...]
    tp_size: int = 1
    remote_num_tokens: int | None = None
    remote_registration_generation: int = 0
    remote_prefill_cached_tokens: int = 0

    @classmethod
    def parse(cls, params: dict[str, Any] | None) -> RemotePrefill | None:
        """The remote-prefill request these params describe, or None to prefill locally."""
        if not params or not params.get("do_remote_prefill"):
            return None
        required = ("remote_engine_id", "remote_request_id", "remote_host", "remote_port")
        block_ids = params.get("remote_block_ids")
        missing = [name for name in required if params.get(name) is None]
        if missing or not block_ids:
            logger.warning(
                "Got invalid KVTransferParams: missing=%s; prefilling locally",
                ",".join(missing or ["remote_block_ids"]),
            )
            return None
        groups = block_ids if isinstance(block_ids[0], list) else [block_ids]
        return cls(
            remote_engine_id=str(params["remote_engine_id"]),
            remote_request_id=str(params["remote_request_id"]),
            remote_host=str(params["remote_host"]),
            remote_port=int(params["remote_port"]),
            remote_block_ids=tuple(tuple(int(b) for b in group) for group in groups),
            tp_size=int(params.get("tp_size") or 1),
            remote_num_tokens=params.get("remote_num_tokens"),
            remote_registration_generation=int(params.get("remote_registration_generation") or 0),
            remote_prefill_cached_tokens=int(params.get("remote_prefill_cached_tokens") or 0),
        )

    @property
    def num_blocks(self) -> int:
        return len(self.remote_block_ids[0])


def wants_remote_decode(params: dict[str, Any] | None) -> bool:
    """True when the request asks this pod to prefill for a remote decoder."""
    return bool(params and params.get("do_remote_decode"))


@dataclass(frozen=True, slots=True)
class ProducerIdentity:
    """How consumers reach this pod's KV: engine id and the NIXL side channel."""

    engine_id: str
    side_channel_host: str
    side_channel_port: int
    tp_size: int = 1


def producer_params(
    identity: ProducerIdentity,
    request_id: str,
    block_ids: list[int],
    num_tokens: int,
    cached_tokens: int,
) -> dict[str, Any]:
    """The `kv_transfer_params` a producer returns for a request whose blocks it holds: vLLM's
    fields in its order (vllm-project/vllm: .../kv_connector/v1/nixl/pull_scheduler.py,
    `request_finished`)."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [list(block_ids)],
        "remote_engine_id": identity.engine_id,
        "remote_request_id": request_id,
        "remote_host": identity.side_channel_host,
        "remote_port": identity.side_channel_port,
        "tp_size": identity.tp_size,
        "dcp_size": 1,
        "pp_size": 1,
        "remote_num_tokens": num_tokens,
        "remote_blocks_expiry_time": None,
        "transfer_mode": "pull",
        # Added by vLLM's scheduler after the connector's fields (v1/core/sched/scheduler.py):
        # the producer's prefix-cache hit, which the decoder then reports as its cached tokens
        # (v1/engine/output_processor.py).
        "remote_prefill_cached_tokens": cached_tokens,
    }


@dataclass(frozen=True, slots=True)
class RemoteLoad:
    """A job for the pod's shell: fetch these blocks, then call `finish_remote_load`."""

    request_id: str
    source: RemotePrefill
    num_tokens: int
    """Tokens to receive (the prompt minus what the local prefix cache already had)."""


@dataclass(slots=True)
class HeldRequest:
    """Blocks a producer keeps for a remote decoder, and until when."""

    blocks: list[KVBlock]
    num_tokens: int
    expiry: float
    reads: int = 0


@dataclass(slots=True)
class HeldKV:
    """Producer-side registry of held KV blocks with vLLM's lease + heartbeat semantics.

    The lease starts at `lease_duration` seconds; each heartbeat sets the expiry to
    max(old, now + lease_duration * 2 // 3); consumers heartbeat every lease_duration // 6
    seconds (vllm-project/vllm: docs/design/kv_cache_lease.md).
    """

    lease_duration: int = DEFAULT_KV_LEASE_DURATION_S
    requests: dict[str, HeldRequest] = field(default_factory=dict)

    @property
    def heartbeat_interval(self) -> float:
        return float(max(1, self.lease_duration // 6))

    def hold(self, request_id: str, blocks: list[KVBlock], num_tokens: int, now: float) -> None:
        self.requests[request_id] = HeldRequest(blocks, num_tokens, now + self.lease_duration)

    def heartbeat(self, request_id: str, now: float) -> bool:
        held = self.requests.get(request_id)
        if held is None:
            return False
        held.expiry = max(held.expiry, now + self.lease_duration * 2 // 3)
        return True

    def read(self, request_id: str, block_ids: tuple[int, ...], now: float) -> HeldRequest:
        """Validate a consumer's read; raises KVReadError when the blocks are not held."""
        held = self.requests.get(request_id)
        if held is None:
            raise KVReadError(f"no KV held for request {request_id} (released or expired)")
        if now >= held.expiry:
            raise KVReadError(f"KV lease of request {request_id} expired")
        held_ids = tuple(block.block_id for block in held.blocks)
        if block_ids != held_ids[: len(block_ids)] or not block_ids:
            raise KVReadError(f"block ids do not match the KV held for request {request_id}")
        held.reads += 1
        return held

    def release(self, request_id: str) -> list[KVBlock] | None:
        """Blocks to free once the consumer is done, or None if nothing was held."""
        held = self.requests.pop(request_id, None)
        return None if held is None else held.blocks

    def expire(self, now: float) -> list[tuple[str, list[KVBlock]]]:
        """Remove and return every held request whose lease ran out."""
        expired = [rid for rid, held in self.requests.items() if now >= held.expiry]
        return [(rid, self.requests.pop(rid).blocks) for rid in expired]
