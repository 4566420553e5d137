"""What a prefill pod is: vLLM producing KV for remote decoders, on the serving port.

The orchestrator sends prefill requests to port 8000 of a prefill pod (tandem's convention);
decoders pull the KV over NIXL from the side channel at 5600.
"""

from __future__ import annotations

from dataclasses import replace

from costmodel.profiles import profile_launch
from mesh.vllm_launch import KVLoadFailurePolicy, VllmLaunch

PREFILL_VLLM_PORT = 8000


def prefill_pod(
    profile: str,
    *,
    port: int = PREFILL_VLLM_PORT,
    served_model_name: str | None = None,
    side_channel_port: int = 5600,
    kv_load_failure_policy: KVLoadFailurePolicy = "fail",
) -> VllmLaunch:
    """A prefill-pool vLLM server (`kv_producer`)."""
    return replace(
        profile_launch(profile, "prefill", port, "kv_producer"),
        served_model_name=served_model_name,
        side_channel_port=side_channel_port,
        kv_load_failure_policy=kv_load_failure_policy,
    )
