"""`decode-itl-scorer`: a decode pod's next step predicted from its batch and KV, scored by
the room it leaves under the ITL target."""

from __future__ import annotations

from typing import Any

import pytest

from tandem.discovery.endpoints import Endpoint
from tandem.orchestrator.scheduling.plugins.decode_itl_scorer import DecodeItlScorer
from tandem.orchestrator.scheduling.types import EndpointView, EngineMetrics
from tests.unit.scheduling.support import make_cycle, make_request

SIMPLE = {
    "itlTargetMs": 20.0,
    "stepOverheadMs": 1.0,
    "weightsReadMs": 5.0,
    "linearUsPerToken": 100.0,
    "kvReadNsPerToken": 100.0,
}
"""Round coefficients: 1 ms + max(5 ms, 0.1 ms a sequence) + 0.1 ms per 1,000 KV tokens."""


def _view(
    *, running: int = 0, kv_usage: float = 0.0, in_flight: int = 0, fresh: bool = True
) -> EndpointView:
    metrics = EngineMetrics(
        waiting=0, running=running, kv_usage=kv_usage, scraped_at=0.0,
        block_size=16, num_gpu_blocks=62_500,  # 1,000,000 tokens
    )  # fmt: skip
    endpoint = Endpoint("d0", "127.0.0.1", 8000)
    return EndpointView(endpoint, metrics, metrics_fresh=fresh, in_flight=in_flight)


@pytest.mark.parametrize(
    ("view", "prompt_tokens", "step_ms", "score"),
    [
        # Small batch: the weights floor, plus the prompt's own KV (1,000 tokens: 0.1 ms).
        pytest.param(_view(), 1000, 6.1, 0.695, id="idle-weights-bound"),
        # 99 running + 1: 10 ms of dense compute; 10 % of 1M tokens: 10 ms of KV reads.
        pytest.param(_view(running=99, kv_usage=0.1), 0, 21.0, 0.0, id="over-target"),
        pytest.param(_view(running=49, kv_usage=0.05), 0, 11.0, 0.45, id="half-loaded"),
        # The gateway's own count sees requests the last scrape has not.
        pytest.param(_view(running=0, in_flight=79), 0, 9.0, 0.55, id="in-flight-counts"),
    ],
)
def test_predicted_step_and_score(
    view: EndpointView, prompt_tokens: int, step_ms: float, score: float
) -> None:
    scorer = DecodeItlScorer.from_parameters("decode-itl-scorer", SIMPLE)
    cycle = make_cycle(make_request("x", num_prompt_tokens=prompt_tokens))

    assert scorer.predicted_step_ms(view, prompt_tokens) == pytest.approx(step_ms)
    assert scorer.score(cycle, [view])["d0"] == pytest.approx(score)


@pytest.mark.parametrize(
    "view",
    [_view(fresh=False), EndpointView(Endpoint("d0", "127.0.0.1", 8000))],
    ids=["stale", "never-scraped"],
)
def test_without_fresh_metrics_a_pod_scores_0(view: EndpointView) -> None:
    scorer = DecodeItlScorer.from_parameters("decode-itl-scorer", SIMPLE)

    assert scorer.score(make_cycle(), [view]) == {"d0": 0.0}


def test_the_emptier_pod_wins() -> None:
    scorer = DecodeItlScorer.from_parameters("decode-itl-scorer", {})
    busy = EndpointView(
        Endpoint("busy", "127.0.0.1", 8001),
        EngineMetrics(0, 200, 0.6, 0.0, block_size=16, num_gpu_blocks=28_125),
        metrics_fresh=True,
    )
    quiet = EndpointView(
        Endpoint("quiet", "127.0.0.1", 8002),
        EngineMetrics(0, 20, 0.1, 0.0, block_size=16, num_gpu_blocks=28_125),
        metrics_fresh=True,
    )
    scores = scorer.score(make_cycle(make_request("x", num_prompt_tokens=7200)), [busy, quiet])

    assert scores["quiet"] > scores["busy"]


@pytest.mark.parametrize("parameters", [{"itlTargetMs": 0}, {"kvReadNsPerToken": -1}, {"x": 1}])
def test_bad_parameters_are_refused(parameters: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(parameters))):
        DecodeItlScorer.from_parameters("decode-itl-scorer", parameters)
