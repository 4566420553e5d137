"""How fast a vLLM pod runs: engine profiles, the step-time model, and what a pod sustains
within an SLO."""
