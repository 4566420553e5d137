"""Endpoints, the model-server pods requests go to (`endpoints.py`), and where the set of them
comes from: a static list, or Kubernetes pods by label selector (`kubernetes.py`, configured by
`config.py`). The orchestrator discovers its pools here, and the sidecar its prefill pods."""
