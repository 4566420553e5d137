"""The decode pool: vLLM servers that read prefilled KV over NIXL and generate the tokens,
each behind a routing sidecar.

The sidecar listens on 8000 (what the orchestrator and Services address) and forwards to the
local vLLM on 8200, which pulls prefilled KV over NIXL as the NixlConnector's consumer
(`kv_consumer`) before decoding. What every pod is made of is `tandem.pods`'s.
"""

from tandem.pods.pool import Pool

DECODE = Pool(
    role="decode",
    kv_role="kv_consumer",
    vllm_port=8200,
    sidecar_port=8000,
    pod_name="decode",
    max_num_batched_tokens=2048,
)

__all__ = ["DECODE"]
