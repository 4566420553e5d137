"""What a person reads after `tandem bench`: report.md, from `BenchResults` (the plots beside
it are `tandem.bench.plots`'s).

results.json (`write_results` / `load_results`, defined in `tandem.bench.results`) is the raw
record; everything here is derived from it, so a report can be rebuilt from a results file
alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tandem.bench.records import StageSummary
from tandem.bench.results import (
    BenchResults,
    RunResult,
    SloTargets,
    load_results,
    shape_label,
    write_results,
)

__all__ = [
    "BASELINE_POLICY",
    "BenchResults",
    "RunResult",
    "SloTargets",
    "load_results",
    "write_markdown",
    "write_results",
]

BASELINE_POLICY = "round-robin"
"""The policy other policies are compared against, when a run of it is present."""

_MISSING = "-"


def write_markdown(
    path: Path, results: BenchResults, *, title: str = "tandem bench", lead: Sequence[str] = ()
) -> None:
    """report.md: setup, definitions, warnings, goodput, comparison, reference, stage tables;
    `lead` sections (e.g. a recommendation) come right after the setup."""
    sections = [
        _setup(results, title),
        *lead,
        "## Definitions\n\n" + results.definitions.strip(),
        _warnings(results),
        _goodput_table(results),
        _comparison(results),
        _reference(results),
        *(_run_table(run) for run in results.runs),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(s for s in sections if s) + "\n")


def _setup(results: BenchResults, title: str) -> str:
    clusters = ", ".join(
        f"`{name}` ({shape_label(shape)})" for name, shape in results.clusters.items()
    )
    time_line = (
        f"- Time scale: {results.time_scale:g} wall seconds per model second; every time and "
        "rate below is in model time"
        if results.time_scale
        else "- Time: virtual (a discrete-event simulation); every time and rate is model time"
    )
    lines = [
        f"# {title}: {results.workload}",
        "",
        "## Setup",
        "",
        f"- Workload: `{results.workload}`",
        f"- Model: `{results.model}`",
        time_line,
        f"- Target: {results.target or 'local cluster started by tandem'}",
        f"- SLO: {results.slo.describe()}",
        f"- Clusters: {clusters or _MISSING}",
        f"- Policies: {', '.join(f'`{p}`' for p in results.policies) or _MISSING}",
    ]
    lines += [f"- {key}: {value}" for key, value in results.metadata.items()]
    return "\n".join(lines)


def _warnings(results: BenchResults) -> str:
    lines = ["## Warnings", ""]
    limited = [(run, s) for run in results.runs for s in run.stages if s.machine_limited]
    if limited:
        lines += [
            "**Machine-limited stages**: the load generator fell behind its schedule or the "
            "CPU was saturated, so these stages measured the benchmark machine, not the system "
            "under test. Do not read their figures as the system's.",
            "",
        ]
        lines += [
            f"- `{run.cluster}` / `{run.policy}`: stage {s.stage} (rate {s.rate:g}/s), "
            f"generator lag p99 {s.generator_lag_p99_s:.3f} s"
            for run, s in limited
        ]
    else:
        lines.append("No stage was machine-limited.")
    notes = [(run, note) for run in results.runs for note in run.notes]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- `{run.cluster}` / `{run.policy}`: {note}" for run, note in notes]
    return "\n".join(lines)


def _goodput_table(results: BenchResults) -> str:
    tail = results.slo.itl_p99_ms is not None
    rows = [
        [f"`{r.cluster}`", f"`{r.policy}`", str(r.gpus), f"{r.goodput:.2f}", _per_gpu(r)]
        + ([_rate(r.tail_goodput)] if tail else [])
        + [_rate(r.p90_goodput)]
        for r in results.runs
    ]
    header = ["cluster", "policy", "GPUs", "goodput (req/s)", "goodput per GPU (req/s)"]
    header += ["goodput under the tail SLO (req/s)"] if tail else []
    header += ["goodput under P90 TTFT and P90 TPOT (req/s)"]
    return "## Goodput\n\n" + _table(header, rows)


def _rate(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}"


def _per_gpu(run: RunResult) -> str:
    return f"{run.goodput_per_gpu:.3f}" if run.gpus else _MISSING


def _comparison(results: BenchResults) -> str:
    parts = ["## Highest stage, policies compared per cluster"]
    for cluster in results.clusters:
        runs = [r for r in results.runs if r.cluster == cluster and r.top_stage is not None]
        if not runs:
            continue
        baseline = next((r for r in runs if r.policy == BASELINE_POLICY), None)
        base = baseline.top_stage if baseline is not None else None
        header = ["policy", "rate", "req/s", "output tok/s", "P50 TTFT (s)", "success"]
        header += ["hit rate"]
        if base is not None:
            header += ["req/s vs RR", "output tok/s vs RR", "P50 TTFT vs RR"]
        rows = []
        for run in runs:
            top = run.top_stage
            assert top is not None
            row = [
                f"`{run.policy}`",
                f"{top.rate:g}",
                f"{top.requests_per_s:.2f}",
                f"{top.output_tokens_per_s:.0f}",
                _seconds(top.ttft_s.p50),
                _percent(top.success_rate),
                _percent(top.hit_rate),
            ]
            if base is not None:
                row += [
                    _ratio(top.requests_per_s, base.requests_per_s),
                    _ratio(top.output_tokens_per_s, base.output_tokens_per_s),
                    _ratio(top.ttft_s.p50, base.ttft_s.p50),
                ]
            rows.append(row)
        parts.append(f"### `{cluster}`\n\n" + _table(header, rows))
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _reference(results: BenchResults) -> str:
    if not results.reference:
        return ""
    header = ["", "rate", "req/s", "output tok/s", "mean TTFT (s)", "mean ITL (ms)", "mean E2E (s)"]
    rows = []
    top_rates = {r.top_stage.rate for r in results.runs if r.top_stage is not None}
    rate = f"{max(top_rates):g}" if top_rates else _MISSING
    for policy, figures in results.reference.items():
        rows.append(
            [
                f"published `{policy}`",
                rate,
                _number(figures.get("requests_per_s"), 2),
                _number(figures.get("output_tokens_per_s"), 0),
                _seconds(figures.get("ttft_mean_s")),
                _number(figures.get("itl_mean_ms"), 1),
                _seconds(figures.get("e2e_mean_s")),
            ]
        )
    for run in results.runs:
        top = run.top_stage
        if top is None:
            continue
        rows.append(
            [
                f"`{run.cluster}` / `{run.policy}`",
                f"{top.rate:g}",
                f"{top.requests_per_s:.2f}",
                f"{top.output_tokens_per_s:.0f}",
                _seconds(top.ttft_s.mean),
                _milliseconds(top.itl_s.mean),
                _seconds(top.e2e_s.mean),
            ]
        )
    note = (
        "Published figures at the top stage, next to ours; both count throughput over the "
        "window from the stage's first send to its last completion (inference-perf). Mean ITL "
        "here is over all inter-token gaps."
    )
    return "## Published reference\n\n" + note + "\n\n" + _table(header, rows)


def _run_table(run: RunResult) -> str:
    refusals = any(s.rejected for s in run.stages)
    scaling = any(s.desired_replicas for s in run.stages)
    header = [
        "stage",
        "rate",
        "requests",
        "req/s",
        "output tok/s",
        "TTFT p50 / p90 / p99 (s)",
        "ITL p50 / p99 (ms)",
        "success",
        "SLO attainment",
        *(["tail SLO attainment"] if run.tail_goodput is not None else []),
        *(["P90 SLO attainment"] if run.p90_goodput is not None else []),
        *(["refused", "admitted SLO attainment"] if refusals else []),
        "hit rate (ceiling; KV bound)",
        *(["desired replicas (mean)"] if scaling else []),
        "lag p99 (s)",
        "machine-limited",
    ]
    rows = [
        [
            str(s.stage),
            f"{s.rate:g}",
            str(s.requests),
            f"{s.requests_per_s:.2f}",
            f"{s.output_tokens_per_s:.0f}",
            " / ".join(_seconds(v) for v in (s.ttft_s.p50, s.ttft_s.p90, s.ttft_s.p99)),
            " / ".join(_milliseconds(v) for v in (s.itl_s.p50, s.itl_s.p99)),
            _percent(s.success_rate),
            _percent(s.slo_attainment),
            *([_percent(s.tail_slo_attainment)] if run.tail_goodput is not None else []),
            *([_percent(s.p90_slo_attainment)] if run.p90_goodput is not None else []),
            *([str(s.rejected), _percent(s.admitted_slo_attainment)] if refusals else []),
            _hit_rate(s),
            *([_desired(s, run.shape)] if scaling else []),
            f"{s.generator_lag_p99_s:.3f}",
            "**yes**" if s.machine_limited else "no",
        ]
        for s in run.stages
    ]
    title = f"## Run `{run.cluster}` ({shape_label(run.shape)}, {run.gpus} GPUs) / `{run.policy}`"
    summary = f"Goodput {run.goodput:.2f} req/s ({_per_gpu(run)} per GPU)."
    if run.tail_goodput is not None:
        summary += f" Under the tail SLO: {run.tail_goodput:.2f} req/s."
    if run.p90_goodput is not None:
        summary += f" Under P90 TTFT and P90 TPOT: {run.p90_goodput:.2f} req/s."
    return f"{title}\n\n{summary}\n\n" + _table(header, rows)


def _hit_rate(stage: StageSummary) -> str:
    """The hit rate, then what it could be: unbounded, and with the cluster's KV."""
    bounds = [
        _percent(value)
        for value in (stage.hit_rate_ceiling, stage.hit_rate_kv_bound)
        if value is not None
    ]
    return _percent(stage.hit_rate) + (f" ({'; '.join(bounds)})" if bounds else "")


def _desired(stage: StageSummary, shape: dict[str, int]) -> str:
    """Each pool's mean desired replicas over the stage, against the pods it has."""
    desired = stage.desired_replicas or {}
    return (
        ", ".join(
            f"{pool} {value:.1f} of {shape.get(pool, 0)}" for pool, value in sorted(desired.items())
        )
        or _MISSING
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    if value is None:
        return _MISSING
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def _milliseconds(seconds: float | None) -> str:
    return _MISSING if seconds is None else f"{seconds * 1000:.1f}"


def _percent(share: float | None) -> str:
    return _MISSING if share is None else f"{share * 100:.1f} %"


def _number(value: float | None, decimals: int) -> str:
    return _MISSING if value is None else f"{value:.{decimals}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return _MISSING
    return f"{value / base:.2f}x"
