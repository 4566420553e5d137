"""The orchestrator: the OpenAI-compatible gateway, the two-pass scheduler (`scheduling/`),
endpoint state from scrapes and KV events, admission control, scaling signals, and the gRPC
faces (the Pick API and Envoy's ext_proc)."""
