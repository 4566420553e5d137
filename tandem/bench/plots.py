"""The PNG plots beside report.md: each metric against the offered rate, one panel per
cluster and one line per policy, and the desired replicas per pool."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tandem.bench.records import StageSummary
from tandem.bench.results import BenchResults, RunResult, shape_label

_Metric = Callable[[RunResult, StageSummary], float | None]


def _ttft_p50(_: RunResult, s: StageSummary) -> float | None:
    return s.ttft_s.p50


def _output_tokens_per_s(_: RunResult, s: StageSummary) -> float | None:
    return s.output_tokens_per_s


def _success_percent(_: RunResult, s: StageSummary) -> float | None:
    return s.success_rate * 100


def _hit_rate_percent(_: RunResult, s: StageSummary) -> float | None:
    return None if s.hit_rate is None else s.hit_rate * 100


def write_plots(directory: Path, results: BenchResults) -> list[Path]:
    """PNG plots against offered rate: one panel per cluster, one line per policy."""
    directory.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str, str, _Metric, str | None, bool]] = [
        ("ttft_p50.png", "P50 time to first token", "TTFT p50 (model s, log)", _ttft_p50,
         "ttft_mean_s", True),
        ("output_throughput.png", "Output throughput", "output tokens / model s",
         _output_tokens_per_s, "output_tokens_per_s", False),
        ("success_rate.png", "Success rate", "successful requests (%)", _success_percent,
         None, False),
        ("hit_rate.png", "Prefix-cache hit rate", "prompt tokens from cache (%)",
         _hit_rate_percent, None, False),
    ]  # fmt: skip
    written = []
    for filename, title, ylabel, metric, reference_key, log_y in plots:
        figure = _figure(results, title, ylabel, metric, reference_key, log_y)
        path = directory / filename
        figure.savefig(path, dpi=110)
        written.append(path)
    if any(s.desired_replicas for run in results.runs for s in run.stages):
        path = directory / "desired_replicas.png"
        _desired_figure(results).savefig(path, dpi=110)
        written.append(path)
    return written


_POOL_STYLES = {"prefill": "--", "decode": "-", "both": ":"}


def _desired_figure(results: BenchResults) -> Figure:
    """Each pool's mean desired replicas against the offered load, one panel per cluster,
    with the pods the cluster has as a thin grey line."""
    clusters = list(results.clusters)
    figure, axes = _panels(len(clusters))
    colors = _policy_colors(results)
    for ax, cluster in zip(axes, clusters, strict=True):
        shape = results.clusters.get(cluster, {})
        for run in (r for r in results.runs if r.cluster == cluster):
            rates = [s.rate for s in run.stages]
            for pool, style in _POOL_STYLES.items():
                values = [(s.desired_replicas or {}).get(pool, math.nan) for s in run.stages]
                if all(math.isnan(v) for v in values):
                    continue
                ax.plot(rates, values, style, marker="o", markersize=4,
                        color=colors[run.policy], label=f"{run.policy}: {pool}")  # fmt: skip
        for pool, count in shape.items():
            if count and pool in _POOL_STYLES:
                ax.axhline(count, linestyle=_POOL_STYLES[pool], color="grey", linewidth=0.8)
        ax.set_title(f"{cluster} ({shape_label(shape)}; grey: pods it has)", fontsize=10)
        ax.set_xlabel("offered load (requests / model s)")
        ax.set_yscale("log", base=2)  # past saturation a backlog's need grows by multiples
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("desired replicas (stage mean, log)")
    handles, labels = _legend_entries(axes)
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    figure.suptitle(f"Scaling signals: desired replicas per pool — {results.workload}")
    return figure


def _panels(count: int) -> tuple[Figure, Sequence[Axes]]:
    """A figure of `count` side-by-side panels (one per cluster) sharing their y axis."""
    figure = Figure(figsize=(max(7.0, 4.6 * count + 0.6), 5.0), layout="constrained")
    return figure, list(figure.subplots(1, count, sharey=True, squeeze=False)[0])


def _policy_colors(results: BenchResults) -> dict[str, str]:
    """One colour per policy, in run order, the same in every plot."""
    return {policy: f"C{i % 10}" for i, policy in enumerate(results.policies)}


def _legend_entries(axes: Sequence[Axes]) -> tuple[list[Any], list[str]]:
    """Every panel's legend entries, each label once, in the order the panels show them."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


def _figure(
    results: BenchResults,
    title: str,
    ylabel: str,
    metric: _Metric,
    reference_key: str | None,
    log_y: bool,
) -> Figure:
    clusters = list(results.clusters) or ["(no runs)"]
    figure, axes = _panels(len(clusters))
    policies = results.policies
    colors = _policy_colors(results)
    for ax, cluster in zip(axes, clusters, strict=True):
        runs = [r for r in results.runs if r.cluster == cluster]
        for run in runs:
            _plot_run(ax, run, metric, colors[run.policy])
        if reference_key is not None:
            _plot_reference(ax, results, reference_key)
        shape = results.clusters.get(cluster, {})
        ax.set_title(f"{cluster} ({shape_label(shape)})" if shape else cluster, fontsize=10)
        ax.set_xlabel("offered load (requests / model s)")
        ax.grid(True, alpha=0.3)
        if log_y:
            ax.set_yscale("log")
        elif ylabel.endswith("(%)"):
            ax.set_ylim(0, 105)
    axes[0].set_ylabel(ylabel)
    handles, labels = _legend_entries(axes)
    # Policies first, in run order; then the markers (machine-limited, published figures).
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in policies)
    if handles:
        figure.legend(
            [handles[i] for i in order],
            [labels[i] for i in order],
            loc="outside lower center",
            ncols=min(len(labels), 2 * len(clusters), 4),
            fontsize=8,
        )
    figure.suptitle(f"{title} — {results.workload}, time scale {results.time_scale:g}")
    return figure


def _plot_run(ax: Axes, run: RunResult, metric: _Metric, color: str) -> None:
    points = [(s.rate, metric(run, s), s.machine_limited) for s in run.stages]
    rates = [rate for rate, _, _ in points]
    values = [math.nan if value is None else value for _, value, _ in points]
    ax.plot(rates, values, marker="o", markersize=4, color=color, label=run.policy)
    limited = [(r, v) for r, v, flag in zip(rates, values, (p[2] for p in points), strict=True)
               if flag and not math.isnan(v)]  # fmt: skip
    if limited:
        ax.scatter(
            [r for r, _ in limited],
            [v for _, v in limited],
            s=130,
            facecolors="none",
            edgecolors="red",
            linewidths=1.5,
            label="machine-limited stage",
            zorder=3,
        )


_REFERENCE_COLORS = ("gold", "magenta", "black", "cyan")
_REFERENCE_QUALIFIER = {
    "ttft_mean_s": " (mean TTFT)",
    "output_tokens_per_s": "",
}


def _plot_reference(ax: Axes, results: BenchResults, key: str) -> None:
    top_rates = [r.top_stage.rate for r in results.runs if r.top_stage is not None]
    if not top_rates:
        return
    for index, (policy, figures) in enumerate(results.reference.items()):
        value = figures.get(key)
        if value is None:
            continue
        label = f"published {policy}" + _REFERENCE_QUALIFIER.get(key, "")
        ax.scatter(
            [max(top_rates)],
            [value],
            marker="*",
            s=220,
            color=_REFERENCE_COLORS[index % len(_REFERENCE_COLORS)],
            edgecolors="black",
            linewidths=0.6,
            label=label,
            zorder=4,
        )
