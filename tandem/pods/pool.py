"""A pool and its pods: what every pod of a pool shares (its role, vLLM's KV role, its ports,
whether a sidecar fronts it), and one pod of it running an engine profile.

Every tool builds its pods here, from the pools `prefill/` and `decode/` define and the
aggregated pool below: `tandem up`, `tandem bench` and `tandem plan` (through
`tandem.cluster.topology`), `tandem sim --print-vllm-command`, and the charts' tests, which
hold each chart's rendered pod to the same definition.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.costmodel.profiles import get_profile
from tandem.pods.launch import (
    NIXL_SIDE_CHANNEL_PORT,
    KVLoadFailurePolicy,
    KVRole,
    PoolRole,
    VllmLaunch,
)


@dataclass(frozen=True, slots=True)
class Pool:
    """What every pod of one pool shares."""

    role: PoolRole
    """The pods' `llm-d.ai/role` label."""
    kv_role: KVRole | None
    """vLLM's `kv_role` for the NixlConnector; None: no connector (an aggregated pod)."""
    vllm_port: int
    """Where the pod's vLLM serves."""
    sidecar_port: int | None = None
    """Where the routing sidecar in front of vLLM serves, if one does."""
    pod_name: str = "pod"
    """Pods of a local cluster are named `{pod_name}-{i}`."""
    max_num_batched_tokens: int | None = None
    """vLLM's `--max-num-batched-tokens` for the pool's pods; None: vLLM's default."""

    def pod(
        self,
        profile: str,
        *,
        served_model_name: str | None = None,
        vllm_port: int | None = None,
        sidecar_port: int | None = None,
        side_channel_port: int = NIXL_SIDE_CHANNEL_PORT,
        kv_load_failure_policy: KVLoadFailurePolicy = "fail",
    ) -> Pod:
        """A pod of this pool running the profile's model at its tensor-parallel size (the
        profile also names the simulated pod that stands in for it), vLLM's defaults
        otherwise."""
        engine = get_profile(profile)
        vllm = VllmLaunch(
            pool_role=self.role,
            profile=profile,
            model=engine.model,
            tensor_parallel_size=engine.tensor_parallel_size,
            port=self.vllm_port if vllm_port is None else vllm_port,
            kv_role=self.kv_role,
            served_model_name=served_model_name,
            side_channel_port=side_channel_port,
            kv_load_failure_policy=kv_load_failure_policy,
            max_num_batched_tokens=self.max_num_batched_tokens,
        )
        if self.sidecar_port is None:
            return Pod(self, vllm)
        return Pod(self, vllm, self.sidecar_port if sidecar_port is None else sidecar_port)


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod: its vLLM server, and the routing sidecar in front of it where its pool has one."""

    pool: Pool
    vllm: VllmLaunch
    sidecar_port: int | None = None

    @property
    def serving_port(self) -> int:
        """Where the orchestrator and Services reach the pod: the sidecar's port, else vLLM's."""
        return self.vllm.port if self.sidecar_port is None else self.sidecar_port

    def sidecar_argv(self) -> list[str]:
        """The routing sidecar's command line (empty for a pod without one)."""
        if self.sidecar_port is None:
            return []
        return [
            "tandem", "sidecar",
            "--port", str(self.sidecar_port),
            "--vllm-port", str(self.vllm.port),
        ]  # fmt: skip


AGGREGATED = Pool(role="both", kv_role=None, vllm_port=8000, pod_name="pod")
"""Pods that prefill and decode their own requests (`llm-d.ai/role: both`), no connector: the
aggregated baseline a P/D split is measured against, on the prefill pool's serving port."""
