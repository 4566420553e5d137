"""The routing sidecar on each decode pod: runs a request's prefill on the prefill pod the
orchestrator chose (allowlisted), then hands the local vLLM the KV-transfer parameters so it
pulls the KV over NIXL and decodes."""
