"""The prefill pool: vLLM servers that compute prompts' KV and hold it for decoders to read.

A prefill pod runs vLLM as the NixlConnector's producer (`kv_producer`), with no sidecar, on
port 8000 (tandem's convention): the decode pods' sidecars send it their prefill requests
there, and the orchestrator scrapes its metrics there. Decoders pull the KV over NIXL from its
side channel at 5600. What every pod is made of is `tandem.pods`'s.
"""

from tandem.pods.pool import Pool

PREFILL = Pool(role="prefill", kv_role="kv_producer", vllm_port=8000, pod_name="prefill")

__all__ = ["PREFILL"]
