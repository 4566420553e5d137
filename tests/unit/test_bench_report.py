"""results.json round trip, report.md contents and PNG plots, from a small fake benchmark."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tandem.bench.plots import write_plots
from tandem.bench.records import RequestRecord, StageSummary
from tandem.bench.report import (
    BenchResults,
    RunResult,
    SloTargets,
    load_results,
    write_markdown,
    write_results,
)
from tandem.bench.summary import summarize_stage
from tandem.errors import ResultsFormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LADDER = [(0, 5.0), (1, 10.0)]  # (stage, rate), 2 model seconds each


def _records(stage: int, rate: float, ttft_s: float, *, lag_s: float = 0.0) -> list[RequestRecord]:
    count = int(rate * 2)
    return [
        RequestRecord(
            request_id=f"s{stage}-{n}",
            stage=stage,
            scheduled_s=stage * 2 + n / rate,
            sent_s=stage * 2 + n / rate + lag_s,
            prompt_tokens=1000,
            max_tokens=3,
            group=n % 3,
            success=n != 0,
            status=200 if n else 503,
            error=None if n else "overloaded",
            ttft_s=ttft_s if n else None,
            e2e_s=ttft_s + 0.06 if n else None,
            output_tokens=3 if n else 0,
            itl_s=[0.02, 0.04] if n else [],
            cached_tokens=800 if n else None,
        )
        for n in range(count)
    ]


def _run(
    policy: str, cluster: str, ttft_s: float, *, lagging_stage: int | None = None
) -> RunResult:
    stages: list[StageSummary] = []
    records: list[RequestRecord] = []
    for stage, rate in LADDER:
        lag = 3.0 if stage == lagging_stage else 0.0
        stage_records = _records(stage, rate, ttft_s * (stage + 1), lag_s=lag)
        records += stage_records
        stages.append(
            summarize_stage(stage, rate, 2.0, stage_records, 1.0, 0.05, 0.25 * (stage + 1), False)
        )
    shape = {"both": 8} if cluster == "aggregated-8" else {"prefill": 4, "decode": 4}
    return RunResult.from_stages(
        cluster=cluster,
        shape=shape,
        policy=policy,
        gpus=8,
        stages=stages,
        records=records,
        notes=["first stage started cold"] if policy == "tandem" else None,
    )


@pytest.fixture
def results() -> BenchResults:
    return BenchResults(
        workload="shared-prefix-small",
        model="meta-llama/Llama-3.1-8B-Instruct",
        time_scale=4.0,
        target=None,
        slo=SloTargets(ttft_ms=1000, itl_ms=50),
        reference={
            "round-robin": {
                "requests_per_s": 5.73,
                "output_tokens_per_s": 5362,
                "ttft_mean_s": 34.9,
                "itl_mean_ms": 70.4,
            },
            "llm-d": {
                "requests_per_s": 14.41,
                "output_tokens_per_s": 13574,
                "ttft_mean_s": 0.12,
                "itl_mean_ms": None,
            },
        },
        runs=[
            _run("round-robin", "aggregated-8", 0.8),
            _run("tandem", "aggregated-8", 0.2),
            _run("tandem", "pd-4-4", 0.1, lagging_stage=1),
        ],
        metadata={"started": "2025-01-01T00:00:00Z"},
    )


def test_run_result_derives_goodput_and_machine_limited_stages(results: BenchResults) -> None:
    round_robin, tandem, pd = results.runs
    # 90 % of requests succeed in every stage (one failure in 10 or 20) and
    # round-robin's second stage (TTFT 1.6 s) misses the TTFT target: attainment 0.9 then 0.
    assert [s.slo_attainment for s in round_robin.stages] == [0.9, 0.0]
    assert round_robin.goodput == 5.0
    assert tandem.goodput == 10.0
    assert tandem.goodput_per_gpu == 1.25
    assert pd.machine_limited_stages == [1]
    assert round_robin.machine_limited_stages == []


def test_results_json_round_trips(tmp_path: Path, results: BenchResults) -> None:
    path = tmp_path / "out" / "results.json"
    write_results(path, results)
    assert load_results(path) == results
    document = json.loads(path.read_text())
    assert document["clusters"] == {
        "aggregated-8": {"both": 8},
        "pd-4-4": {"prefill": 4, "decode": 4},
    }
    assert document["policies"] == ["round-robin", "tandem"]
    assert len(document["runs"][0]["records"]) == 30
    assert "SLO attainment" in document["definitions"]


def test_results_json_can_leave_out_the_token_gaps(tmp_path: Path, results: BenchResults) -> None:
    path = tmp_path / "results.json"
    write_results(path, results, token_gaps=False)
    loaded = load_results(path)

    kept = [record for run in results.runs for record in run.records]
    read = [record for run in loaded.runs for record in run.records]
    assert any(record.itl_s for record in kept)
    assert all(record.itl_s == [] for record in read)
    assert [dataclasses.replace(r, itl_s=[]) for r in kept] == read
    assert [run.stages for run in loaded.runs] == [run.stages for run in results.runs]


def test_load_results_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ResultsFormatError):
        load_results(path)


def test_markdown_holds_setup_definitions_tables_and_warnings(
    tmp_path: Path, results: BenchResults
) -> None:
    path = tmp_path / "report.md"
    write_markdown(path, results)
    text = path.read_text()
    for expected in [
        "# tandem bench: shared-prefix-small",
        "Time scale: 4 wall seconds per model second",
        "`aggregated-8` (both 8), `pd-4-4` (prefill 4, decode 4)",
        "**SLO attainment**",
        "**Goodput**",
        "**Hit rate**",
        "## Goodput",
        "| `aggregated-8` | `tandem` | 8 | 10.00 | 1.250 |",
        "## Highest stage, policies compared per cluster",
        "req/s vs RR",
        # tandem's P50 TTFT at the top stage is 0.4 s against round-robin's 1.6 s, so its
        # 19 successes finish within 2.36 s of the first send against 3.56 s: 8.05 vs 5.34/s.
        "| `tandem` | 10 | 8.05 | 24 | 0.400 | 95.0 % | 50.0 % | 1.51x | 1.51x | 0.25x |",
        "## Published reference",
        "| published `llm-d` | 10 | 14.41 | 13574 | 0.120 | - | - |",
        "## Run `pd-4-4` (prefill 4, decode 4, 8 GPUs) / `tandem`",
        "- `pd-4-4` / `tandem`: stage 1 (rate 10/s), generator lag p99 3.000 s",
        "first stage started cold",
        "started: 2025-01-01T00:00:00Z",
    ]:
        assert expected in text, expected
    assert text.count("**yes**") == 1
    # pd-4-4 has no round-robin run: no ratio columns in its comparison table.
    pd_section = text.split("### `pd-4-4`")[1].split("##")[0]
    assert "vs RR" not in pd_section


def test_markdown_says_when_no_stage_was_machine_limited(
    tmp_path: Path, results: BenchResults
) -> None:
    results.runs = results.runs[:2]
    results.reference = {}
    path = tmp_path / "report.md"
    write_markdown(path, results)
    text = path.read_text()
    assert "No stage was machine-limited." in text
    assert "Published reference" not in text


def test_plots_are_png_files(tmp_path: Path, results: BenchResults) -> None:
    paths = write_plots(tmp_path / "plots", results)
    assert [p.name for p in paths] == [
        "ttft_p50.png",
        "output_throughput.png",
        "success_rate.png",
        "hit_rate.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), path
        assert len(data) > 1000, path


def test_plots_survive_runs_without_hit_rates_or_reference(
    tmp_path: Path, results: BenchResults
) -> None:
    results.reference = {}
    results.runs = [_run("round-robin", "aggregated-8", 0.5)]
    results.runs[0].stages = [
        summarize_stage(0, 5.0, 2.0, [], 1.0, 0.05, hit_rate=None, cpu_saturated=True)
    ]
    paths = write_plots(tmp_path, results)
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in paths)


def test_a_tail_slo_is_reported_beside_the_mean_one(tmp_path: Path) -> None:
    stages, records = [], []
    for stage, rate in LADDER:
        stage_records = _records(stage, rate, 0.2)
        records += stage_records
        # The records' gaps are 20 and 40 ms: P99 ~40 ms, over a 30 ms tail bound.
        stages.append(
            summarize_stage(
                stage, rate, 2.0, stage_records, 1.0, 0.05, None, False, slo_itl_p99_s=0.03
            )
        )
    run = RunResult.from_stages(
        cluster="pd-4-4", shape={"prefill": 4, "decode": 4}, policy="tandem", gpus=8,
        stages=stages, records=records,
    )  # fmt: skip
    results = BenchResults(
        workload="w", model="m", time_scale=1.0, target=None,
        slo=SloTargets(ttft_ms=1000, itl_ms=50, itl_p99_ms=30), runs=[run],
    )  # fmt: skip
    path = tmp_path / "report.md"
    write_markdown(path, results)
    text = path.read_text()

    assert run.tail_goodput == 0.0
    assert run.goodput == 10.0
    assert "tail SLO: also each request's P99 ITL ≤ 30 ms" in text
    assert "| `pd-4-4` | `tandem` | 8 | 10.00 | 1.250 | 0.00 |" in text
    assert "Under the tail SLO: 0.00 req/s." in text
    write_results(tmp_path / "results.json", results)
    assert load_results(tmp_path / "results.json").runs[0].tail_goodput == 0.0


def test_refusals_and_admitted_attainment_are_reported_where_there_were_any(
    tmp_path: Path,
) -> None:
    stages, records = [], []
    for stage, rate in LADDER:
        stage_records = _records(stage, rate, 0.2)
        stage_records[0].status, stage_records[0].reject_reason = 429, "queue_timeout"
        records += stage_records
        stages.append(summarize_stage(stage, rate, 2.0, stage_records, 1.0, 0.05, None, False))
    run = RunResult.from_stages(
        cluster="pd-4-4", shape={"prefill": 4, "decode": 4}, policy="tandem-admission",
        gpus=8, stages=stages, records=records,
    )  # fmt: skip
    results = BenchResults(
        workload="w", model="m", time_scale=1.0, target=None,
        slo=SloTargets(ttft_ms=1000, itl_ms=50), runs=[run],
    )  # fmt: skip
    write_markdown(tmp_path / "report.md", results)
    text = (tmp_path / "report.md").read_text()
    write_results(tmp_path / "results.json", results)
    loaded = load_results(tmp_path / "results.json").runs[0].stages

    assert "| refused | admitted SLO attainment |" in text
    assert "| 90.0 % | 1 | 100.0 % |" in text  # stage 0: 10 requests, 1 refused
    assert [s.rejected for s in loaded] == [1, 1]
    assert loaded[0].admitted_slo_attainment == 1.0
    assert records[0].reject_reason == "queue_timeout"
