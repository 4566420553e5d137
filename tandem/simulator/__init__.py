"""The simulated vLLM pod: vLLM's HTTP API, metrics, KV events and NixlConnector P/D protocol
over a pure engine core (continuous batching, a paged KV block pool with prefix caching, the
step-time model of `tandem.costmodel`), driven in wall-clock time by `server.py` and in
virtual time by `tandem plan`."""
