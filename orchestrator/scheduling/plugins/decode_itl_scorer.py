"""`decode-itl-scorer`: prefer decode pods whose next steps, with this request added, stay
within the ITL target, and among those the ones with the most room left.

A decode step reads every running sequence's KV and streams the weights once, so its time
grows with the batch and with the contexts the batch holds (tandem's H100 calibration
reference, section 3):

    step = t_ovh + max(t_w, c_lin x (B + 1)) + c_kv x (K + prompt)

B is the pod's running sequences (the larger of the last scrape and the orchestrator's own
in-flight count, which sees a burst before any scrape), K the KV tokens it holds
(`vllm:kv_cache_usage_perc` x its capacity from `vllm:cache_config_info`; a shared prefix
counts once there though each sequence reads it, so K is a lower bound), and the request
adds one sequence of `prompt` tokens. score = (target - step) / target, clamped to [0, 1]:
a pod predicted past the target scores 0. Defaults are a Llama-3.1-8B H100 TP1 pod's
coefficients; set them to the decode pool's engine. A pod without fresh metrics scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import Field

from tandem.orchestrator.scheduling.framework import Cycle
from tandem.orchestrator.scheduling.registry import Plugin, PluginParameters
from tandem.orchestrator.scheduling.types import EndpointView


class DecodeItlParameters(PluginParameters):
    itlTargetMs: float = Field(50.0, gt=0, description="the inter-token gap to keep")
    stepOverheadMs: float = Field(0.5, ge=0, description="t_ovh: fixed cost of a step")
    weightsReadMs: float = Field(6.0, ge=0, description="t_w: streaming the weights once")
    linearUsPerToken: float = Field(24.0, ge=0, description="c_lin: dense compute per token")
    kvReadNsPerToken: float = Field(49.0, ge=0, description="c_kv: reading one token's KV")


class DecodeItlScorer(Plugin):
    type_name = "decode-itl-scorer"
    Parameters = DecodeItlParameters
    parameters: DecodeItlParameters

    def predicted_step_ms(self, view: EndpointView, prompt_tokens: int) -> float | None:
        """The pod's decode step with this request added, or None without fresh metrics."""
        metrics = view.fresh_metrics
        if metrics is None:
            return None
        p = self.parameters
        batch = max(metrics.running, view.in_flight) + 1
        capacity = (metrics.num_gpu_blocks or 0) * (metrics.block_size or 0)
        kv_tokens = metrics.kv_usage * capacity + prompt_tokens
        dense_ms = max(p.weightsReadMs, p.linearUsPerToken * batch / 1000)
        return p.stepOverheadMs + dense_ms + p.kvReadNsPerToken * kv_tokens / 1e6

    def score(self, cycle: Cycle, endpoints: Sequence[EndpointView]) -> Mapping[str, float]:
        target = self.parameters.itlTargetMs
        scores: dict[str, float] = {}
        for view in endpoints:
            step = self.predicted_step_ms(view, cycle.request.num_prompt_tokens)
            scores[view.name] = 0.0 if step is None else max(0.0, (target - step) / target)
        return scores
