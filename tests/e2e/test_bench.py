"""`tandem bench --quick` on a tiny workload, end to end through real local clusters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tandem.bench.report import load_results
from tests.support.processes import REPO_ROOT, TANDEM
from tests.support.servers import cluster_base_port

WORKLOAD = Path(__file__).parent / "data" / "tiny-workload.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quick_bench_writes_results_report_and_plots(tmp_path: Path) -> None:
    base_port = cluster_base_port()
    result = subprocess.run(
        [*TANDEM, "bench", str(WORKLOAD), "--quick", "--policies", "tandem,round-robin",
         "--time-scale", "1", "--output", str(tmp_path), "--base-port", str(base_port)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "tiny"
    results = load_results(out / "results.json")
    assert [(run.cluster, run.policy) for run in results.runs] == [
        ("aggregated-2", "tandem"),
        ("aggregated-2", "round-robin"),
    ]
    first, second = results.runs
    # Both policies saw the same requests.
    assert [r.request_id for r in first.records] == [r.request_id for r in second.records]
    for run in results.runs:
        assert all(record.success for record in run.records), run.policy
        assert all(record.output_tokens == 8 for record in run.records)
        assert [stage.stage for stage in run.stages] == [0, 1]
        assert all(stage.hit_rate is not None for stage in run.stages)
        # The orchestrator's scaling signals, sampled as the stages ran.
        assert all((stage.desired_replicas or {}).get("both", 0) >= 1 for stage in run.stages)
    assert json.loads((out / "results.json").read_text())
    assert "## Highest stage" in (out / "report.md").read_text()
    plots = sorted(out.glob("*.png"))
    assert [p.name for p in plots] == [
        "desired_replicas.png", "hit_rate.png", "output_throughput.png", "success_rate.png",
        "ttft_p50.png",
    ]  # fmt: skip
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in plots)
