"""`tandem bench --target`: the same requests against an existing deployment, the run named
after what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.bench.runner import BenchOptions, run_bench, target_label
from tandem.bench.workload import load_workload
from tests.support.servers import pod_config, running_pod

WORKLOAD = (
    "name: tiny\nmodel: meta-llama/Llama-3.1-8B-Instruct\n"
    "engine_profile: llama-3.1-8b-h100-tp1\ngpus: 1\nclusters: {one: {both: 1}}\n"
    "data: {type: random, num_prompts: 4, input_len: 40, output_len: 4, seed: 1}\n"
    "load: {type: poisson, stages: [{rate: 4, duration: 1}]}\n"
    "slo: {ttft_ms: 1000, itl_ms: 50}\n"
)


@pytest.mark.parametrize(
    ("target", "label", "name"),
    [
        ("http://127.0.0.1:8000", None, "127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "vllm-router pd-4-4", "vllm-router pd-4-4"),
        ("127.0.0.1:8000", None, "127.0.0.1:8000"),
    ],
)
def test_a_target_run_is_named_after_the_target_or_its_label(
    target: str, label: str | None, name: str
) -> None:
    assert target_label(target, label) == name


@pytest.mark.parametrize("label", [None, "baseline"])
def test_a_run_against_a_target_reports_under_its_own_name(
    tmp_path: Path, label: str | None
) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(WORKLOAD)
    workload = load_workload(str(path))

    with running_pod(pod_config()) as url:
        results = run_bench(
            BenchOptions(
                workload=workload,
                policies=("tandem",),
                clusters=("one",),
                time_scale=1.0,
                output=tmp_path / "out",
                target=url,
                label=label,
            )
        )

    expected = label or url.removeprefix("http://")
    assert [(run.cluster, run.policy) for run in results.runs] == [("target", expected)]
    assert results.runs[0].stages[0].success_rate == 1.0
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["runs"][0]["policy"] == expected
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"`{expected}`" in report
    assert "`tandem`" not in report
