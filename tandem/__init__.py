"""tandem: prefill/decode disaggregated serving for vLLM.

One OpenAI-compatible endpoint (`tandem.orchestrator`) in front of a prefill pool
(`tandem.prefill`) and a decode pool (`tandem.decode`), whose pods each run a routing sidecar
(`tandem.sidecar`); `tandem.simulator` stands in for vLLM where there is no GPU. The command
line is `tandem.cli`; docs/architecture.md maps the rest.
"""
