"""Configuration of one simulated vLLM pod, validated at start."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tandem.costmodel.capacity import DEFAULT_MAX_NUM_BATCHED_TOKENS
from tandem.costmodel.profiles import EngineProfile, get_profile
from tandem.errors import UnknownProfileError
from tandem.kvcache.events import KVEventsConfig
from tandem.kvcache.tokenizer import NUM_WORDS
from tandem.pods.launch import (
    DEFAULT_KV_LEASE_DURATION_S,
    KVLoadFailurePolicy,
    KVRole,
    PoolRole,
    VllmLaunch,
)
from tandem.simulator.engine import EngineConfig
from tandem.simulator.faults import FaultConfig
from tandem.simulator.scheduler import BatchingConfig

VLLM_VERSION = "0.33.0"
"""The vLLM release whose behaviour the simulated pod imitates."""


class SimPodConfig(BaseModel):
    """Everything a simulated pod needs; unset engine limits take vLLM's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: PoolRole = "both"
    profile: str = "llama-3.1-8b-h100-tp1"
    served_model_name: str | None = None
    """Name clients use; defaults to the profile's model."""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    side_channel_host: str = "127.0.0.1"
    side_channel_port: int = Field(5600, ge=1, le=65535)
    engine_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    time_scale: float = Field(1.0, gt=0.0)
    """Wall seconds per model second: 10 runs the pod ten times slower than the hardware."""
    block_size: int = Field(16, ge=1)
    num_gpu_blocks: int | None = Field(None, ge=2)
    """KV capacity in blocks; defaults to the profile's capacity."""
    max_model_len: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(1024, ge=1)
    max_num_batched_tokens: int = Field(DEFAULT_MAX_NUM_BATCHED_TOKENS, ge=1)
    long_prefill_token_threshold: int = Field(0, ge=0)
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = False
    enable_server_load_tracking: bool = False
    enable_request_id_headers: bool = False
    """vLLM's `--enable-request-id-headers`: echo X-Request-Id on every response."""
    kv_role: KVRole | None = None
    """The NixlConnector's role; None runs without a KV connector (kv_transfer_params ignored)."""
    kv_lease_duration: int = Field(DEFAULT_KV_LEASE_DURATION_S, ge=1)
    kv_load_failure_policy: KVLoadFailurePolicy = "fail"
    kv_drain_timeout: float | None = Field(None, ge=0.0)
    """Model seconds a stopping pod, once its HTTP server has finished its requests, keeps the
    KV side channel open for decoders to read the blocks it still holds for them. Unset: the
    lease (`kv_lease_duration`), by when every hold no decoder heartbeats has expired anyway
    (vllm-project/vllm: docs/design/kv_cache_lease.md). tandem's own setting: vLLM's
    `--shutdown-timeout` waits for requests in flight, not for KV transfers (vllm-project/vllm
    PR #36666)."""
    natural_output_len: int = Field(256, ge=1)
    """Tokens a request generates before the simulated model emits EOS (unless ignore_eos)."""
    tokenizer: str | None = None
    """Path to a Hugging Face tokenizer.json; the synthetic tokenizer when unset."""
    kv_events_config: KVEventsConfig | None = None
    """vLLM's `--kv-events-config`: publish KV cache events over ZMQ."""
    faults: FaultConfig = Field(default_factory=FaultConfig)

    @model_validator(mode="after")
    def _check_profile(self) -> SimPodConfig:
        try:
            get_profile(self.profile)
        except UnknownProfileError as exc:  # a validation error, with the known profiles
            raise ValueError(str(exc)) from None
        return self

    @property
    def engine_profile(self) -> EngineProfile:
        return get_profile(self.profile)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.engine_profile.model

    @property
    def drain_timeout_s(self) -> float:
        """How long a stopping pod waits for decoders to read its held KV, in model seconds."""
        if self.kv_drain_timeout is None:
            return float(self.kv_lease_duration)
        return self.kv_drain_timeout

    def engine_config(self) -> EngineConfig:
        """The pure engine's configuration derived from this pod's settings."""
        profile = self.engine_profile
        return EngineConfig(
            num_gpu_blocks=self.num_gpu_blocks or profile.num_gpu_blocks(self.block_size),
            max_model_len=self.max_model_len or profile.max_model_len,
            step=profile.step,
            batching=BatchingConfig(
                block_size=self.block_size,
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens,
                long_prefill_token_threshold=self.long_prefill_token_threshold,
            ),
            enable_prefix_caching=self.enable_prefix_caching,
            kv_connector=self.kv_role is not None,
            kv_lease_duration=self.kv_lease_duration,
            kv_load_failure_policy=self.kv_load_failure_policy,
            sample_vocab_size=NUM_WORDS,
            kv_events=self.kv_events_config is not None and self.kv_events_config.publishes,
        )


def simulated_pod(
    launch: VllmLaunch, *, host: str = "127.0.0.1", time_scale: float = 1.0
) -> SimPodConfig:
    """The simulated pod that stands in for a vLLM server of a pool."""
    side_host = host if launch.side_channel_host.startswith("$(") else launch.side_channel_host
    own_model = launch.model if launch.model != get_profile(launch.profile).model else None
    return SimPodConfig(
        role=launch.pool_role,
        profile=launch.profile,
        served_model_name=launch.served_model_name or own_model,
        host=host,
        port=launch.port,
        side_channel_host=side_host,
        side_channel_port=launch.side_channel_port,
        time_scale=time_scale,
        block_size=launch.block_size,
        max_model_len=launch.max_model_len,
        max_num_batched_tokens=launch.max_num_batched_tokens or DEFAULT_MAX_NUM_BATCHED_TOKENS,
        enable_prompt_tokens_details=True,
        enable_server_load_tracking=True,
        kv_role=launch.kv_role,
        kv_lease_duration=launch.kv_lease_duration,
        kv_load_failure_policy=launch.kv_load_failure_policy,
        kv_events_config=launch.kv_events_config(),
    )
