"""A request inside the simulated engine, and what a step reports about it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from tandem.kvcache.hashing import BlockHash
from tandem.simulator.block_pool import KVBlock
from tandem.simulator.kv_connector import RemotePrefill


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    WAITING_FOR_REMOTE_KV = "waiting_for_remote_kv"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    """vLLM's finish reasons as they appear in responses and `vllm:request_success`."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


@dataclass(slots=True, eq=False)
class EngineRequest:
    """One sequence being served: its prompt, limits, progress and KV blocks."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    arrival_time: float
    min_tokens: int = 0
    eos_after: int | None = None
    """Output length at which the model emits EOS (finish "stop"); None never stops early."""
    kv_transfer_params: dict[str, Any] | None = None
    n: int = 1
    """The request's `n`: it is one of n samples of its prompt."""
    sample_index: int = 0
    """Which of the n samples; vLLM observes the per-request parameters once per prompt."""

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    blocks: list[KVBlock] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)
    num_registered_blocks: int = 0
    num_cached_tokens: int | None = None
    """Prompt tokens served from the local prefix cache at first schedule."""
    num_external_tokens: int = 0
    remote: RemotePrefill | None = None
    remote_kv_loaded: bool = False
    """Set once the remote KV has been read (vLLM clears do_remote_prefill at that point)."""
    remote_decode: bool = False
    finish_reason: FinishReason | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    num_preemptions: int = 0
    sample_seed: int | None = None
    """Seed of the request's 'sampled' tokens, computed once from its prompt."""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def awaits_remote_kv(self) -> bool:
        """True until its remote KV has been read: queued, or with the read in flight."""
        if self.remote is None:
            return False
        if self.status is RequestStatus.WAITING_FOR_REMOTE_KV:
            return True
        return self.status is RequestStatus.WAITING and not self.remote_kv_loaded

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


@dataclass(slots=True)
class RequestOutput:
    """What one step produced for one request: new tokens and, at the end, how it finished.

    Treated as immutable; not frozen because a frozen dataclass's constructor costs several
    times more, and an engine builds one per running request and step."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    """Prompt tokens served from a prefix cache (the producer's, for a remote prefill)."""
    kv_transfer_params: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class StepResult:
    """One engine step: when it started and ended (model time) and its outputs."""

    start: float
    end: float
    outputs: tuple[RequestOutput, ...]
    num_prefill_tokens: int = 0
    num_decode_seqs: int = 0

    @property
    def duration(self) -> float:
        return self.end - self.start
