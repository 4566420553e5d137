"""What a decode pod is: the routing sidecar on the serving port, vLLM behind it.

The sidecar listens on 8000 (what the orchestrator and Services address) and forwards to the
local vLLM on 8200, which pulls prefilled KV over NIXL (`kv_consumer`) before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from costmodel.profiles import profile_launch
from mesh.vllm_launch import KVLoadFailurePolicy, VllmLaunch

DECODE_SIDECAR_PORT = 8000
DECODE_VLLM_PORT = 8200


@dataclass(frozen=True, slots=True)
class DecodePod:
    """The decode pod's two containers: the sidecar in front, vLLM behind it."""

    vllm: VllmLaunch
    sidecar_port: int = DECODE_SIDECAR_PORT

    def sidecar_argv(self) -> list[str]:
        """The routing sidecar's command line."""
        return [
            "tandem", "sidecar",
            "--port", str(self.sidecar_port),
            "--vllm-port", str(self.vllm.port),
        ]  # fmt: skip


def decode_pod(
    profile: str,
    *,
    vllm_port: int = DECODE_VLLM_PORT,
    sidecar_port: int = DECODE_SIDECAR_PORT,
    served_model_name: str | None = None,
    side_channel_port: int = 5600,
    kv_load_failure_policy: KVLoadFailurePolicy = "fail",
) -> DecodePod:
    """A decode-pool pod (`kv_consumer` vLLM behind the sidecar)."""
    return DecodePod(
        vllm=replace(
            profile_launch(profile, "decode", vllm_port, "kv_consumer"),
            served_model_name=served_model_name,
            side_channel_port=side_channel_port,
            kv_load_failure_policy=kv_load_failure_policy,
        ),
        sidecar_port=sidecar_port,
    )
