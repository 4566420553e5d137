"""The load generator holds a conversation as a client would: each turn sent a think time
after the answer before it ended, its prompt the history so far."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tandem.bench.client import run_load
from tandem.bench.generate import build_prompts, build_requests, schedule
from tandem.bench.workload import load_workload
from tests.support.servers import pod_config, running_pod


def test_each_turn_waits_for_the_answer_before_it_then_the_think_time(tmp_path: Path) -> None:
    path = tmp_path / "chat.yaml"
    path.write_text(
        "name: chat\nmodel: m\nengine_profile: llama-3.1-8b-h100-tp1\ngpus: 1\n"
        "clusters: {one: {both: 1}}\n"
        "data: {type: multi_turn, system_prompt_len: 200, user_len: 20, output_len: 8,"
        " turns: 3, think_time_s: 0.2, seed: 5}\n"
        "load: {type: poisson, stages: [{rate: 4, duration: 1}]}\n"
        "slo: {ttft_ms: 1000, itl_ms: 50}\n"
    )
    workload = load_workload(str(path))
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))
    assert len(requests) >= 6

    with running_pod(pod_config()) as url:
        records = asyncio.run(run_load(f"{url}/v1/completions", None, requests, prompts, 1.0))

    by_id = {r.request_id: r for r in records}
    assert sorted(by_id) == sorted(r.request_id for r in requests)
    for request in requests:
        record = by_id[request.request_id]
        assert record.success, record.error
        assert record.prompt_tokens == prompts.tokens(request)
        if request.follows is None:
            continue
        before = by_id[requests[request.follows].request_id]
        assert before.e2e_s is not None
        assert record.sent_s >= before.sent_s + before.e2e_s + request.think_s
        assert record.sent_s == pytest.approx(record.scheduled_s, abs=0.05)
        # The pod kept the previous turn's prompt: the history is served from its cache.
        assert record.cached_tokens is not None
        assert record.cached_tokens >= prompts.tokens(requests[request.follows]) - 16
