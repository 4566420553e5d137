"""A whole benchmark's results, and `results.json`: every request record, every stage summary,
and what the run was (workload, time scale, clusters, policies, SLO, published reference).

The file is written compactly (one JSON document, no indentation): the per-request ITL lists
dominate its size. `python -m json.tool results.json` prints it for reading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tandem.bench.records import Percentiles, RequestRecord, StageSummary
from tandem.bench.summary import GOODPUT_THRESHOLD, goodput
from tandem.bench.workload import Slo
from tandem.errors import ResultsFormatError

RESULTS_FORMAT = "tandem-bench-results/1"

DEFINITIONS = """\
- **SLO attainment** of a stage: the share of its requests that succeed with TTFT ≤ `slo.ttft_ms` \
and mean ITL ≤ `slo.itl_ms` (a request with a single output token has no ITL and meets the ITL \
target).
- **Goodput**: the highest request rate at which SLO attainment is ≥ 90 % (DistServe's \
definition), interpolated linearly between ladder stages; per GPU when clusters differ. Stages \
are taken in increasing rate up to the first that misses; if the lowest stage misses, goodput \
is 0.
- **Hit rate**: prompt tokens served from a prefix cache / all prompt tokens, on the pod that \
ran each prefill (KV received over a transfer is not a cache hit): the sum of the responses' \
`usage.prompt_tokens_details.cached_tokens` (which vLLM reports as the prefill side's hits) \
over their prompt tokens. In parentheses, where prompts share prefixes, the stage's ceiling \
(an unbounded cache and perfect routing: each group's system prompt served from its group's \
second request in the run on; a conversation's turn, its previous turn's prompt) and its KV \
bound (the same prompts in arrival order through one LRU cache of whole blocks the size of \
the cluster's KV, answers included: perfect routing with the real capacity).
- **Rate** of a multi-turn workload's stage: conversations started per second; the stage's \
requests are those conversations' turns.
- **Tail SLO** (where the workload sets `slo.itl_p99_ms`): the SLO above and, besides, each \
request's own P99 inter-token gap ≤ `slo.itl_p99_ms`; tail goodput is goodput under it.
- **P90 SLO** (DistServe's form): a stage meets it when its P90 TTFT ≤ `slo.ttft_ms` and the \
P90 of its requests' TPOT (each request's mean ITL) ≤ `slo.itl_ms`, failed requests counting \
as misses; P90 goodput is goodput under it (its attainment: the smaller of the two shares).
- **Throughput** of a stage: its successful requests (and their tokens) per second of the \
longer of the stage's duration and its completion window (first send to last completion, as \
inference-perf counts): a system that keeps up shows the offered rate, one that falls behind \
the lower rate it sustained. **Machine-limited**: the load generator's send lag p99 exceeded its \
limit or the CPU was saturated, so the stage measured the benchmark machine, not the system.
- **Refused** (shown where admission control refused requests): requests the orchestrator \
answered 429/503 with an `x-tandem-reject-reason` instead of serving; they count as misses in \
SLO attainment. **Admitted SLO attainment**: SLO attainment of the other requests alone.
"""


def shape_label(shape: dict[str, int]) -> str:
    """A cluster's shape as the reports name it, e.g. `prefill 4, decode 4`."""
    return ", ".join(f"{role} {count}" for role, count in shape.items() if count)


@dataclass(frozen=True, slots=True)
class SloTargets:
    ttft_ms: float
    itl_ms: float
    itl_p99_ms: float | None = None

    @classmethod
    def of(cls, slo: Slo) -> SloTargets:
        return cls(slo.ttft_ms, slo.itl_ms, slo.itl_p99_ms)

    def describe(self) -> str:
        """The SLO in words, for reports."""
        text = f"TTFT ≤ {self.ttft_ms:g} ms, mean ITL ≤ {self.itl_ms:g} ms"
        if self.itl_p99_ms is not None:
            text += f"; tail SLO: also each request's P99 ITL ≤ {self.itl_p99_ms:g} ms"
        return text


@dataclass(slots=True)
class RunResult:
    """One cluster shape under one scheduling policy, over the whole ladder."""

    cluster: str
    shape: dict[str, int]
    """The workload's cluster entry, e.g. {"prefill": 4, "decode": 4}."""
    policy: str
    gpus: int
    stages: list[StageSummary]
    records: list[RequestRecord]
    goodput: float
    notes: list[str] = field(default_factory=list)
    machine_limited_stages: list[int] = field(default_factory=list)
    tail_goodput: float | None = None
    """Goodput under the tail SLO, when the workload sets one."""
    p90_goodput: float | None = None
    """Goodput under DistServe's P90 TTFT / P90 TPOT form; None in older results."""

    @classmethod
    def from_stages(
        cls,
        *,
        cluster: str,
        shape: dict[str, int],
        policy: str,
        gpus: int,
        stages: list[StageSummary],
        records: list[RequestRecord],
        notes: list[str] | None = None,
    ) -> RunResult:
        """Goodput and the machine-limited stage list computed from the summaries."""
        return cls(
            cluster=cluster,
            shape=shape,
            policy=policy,
            gpus=gpus,
            stages=stages,
            records=records,
            goodput=goodput(stages, GOODPUT_THRESHOLD),
            notes=list(notes or []),
            machine_limited_stages=[s.stage for s in stages if s.machine_limited],
            tail_goodput=goodput(stages, GOODPUT_THRESHOLD, form="tail")
            if stages and all(s.tail_slo_attainment is not None for s in stages)
            else None,
            p90_goodput=goodput(stages, GOODPUT_THRESHOLD, form="p90")
            if stages and all(s.p90_slo_attainment is not None for s in stages)
            else None,
        )

    @property
    def goodput_per_gpu(self) -> float:
        return self.goodput / self.gpus if self.gpus else 0.0

    @property
    def top_stage(self) -> StageSummary | None:
        return max(self.stages, key=lambda s: s.rate, default=None)


@dataclass(slots=True)
class BenchResults:
    workload: str
    model: str
    time_scale: float
    """Wall seconds per model second: every time in here is wall time / time_scale."""
    target: str | None
    """URL of an external cluster under test, None when tandem started its own."""
    slo: SloTargets
    reference: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """The workload's `reference` block: published figures by policy name."""
    runs: list[RunResult] = field(default_factory=list)
    definitions: str = DEFINITIONS
    metadata: dict[str, str] = field(default_factory=dict)
    """Free-form facts about the run (start time, host, commit), shown in the report."""

    @property
    def clusters(self) -> dict[str, dict[str, int]]:
        return {run.cluster: run.shape for run in self.runs}

    @property
    def policies(self) -> list[str]:
        return list(dict.fromkeys(run.policy for run in self.runs))


def write_results(path: Path, results: BenchResults, *, token_gaps: bool = True) -> None:
    """results.json: metadata, per-stage summaries and every raw request record. Without
    `token_gaps` the records leave out their inter-token gaps (`itl_s` is empty; the stage
    summaries were computed with them): a simulated 16-GPU ladder has 17 million of them."""
    document = {
        "format": RESULTS_FORMAT,
        "workload": results.workload,
        "model": results.model,
        "time_scale": results.time_scale,
        "target": results.target,
        "slo": asdict(results.slo),
        "reference": results.reference,
        "clusters": results.clusters,
        "policies": results.policies,
        "definitions": results.definitions,
        "metadata": results.metadata,
        "runs": [_run_document(run, token_gaps) for run in results.runs],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n")


def load_results(path: Path) -> BenchResults:
    """Read back what `write_results` wrote."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("format") != RESULTS_FORMAT:
        raise ResultsFormatError(f"{path}: not a {RESULTS_FORMAT} file")
    try:
        return BenchResults(
            workload=document["workload"],
            model=document["model"],
            time_scale=document["time_scale"],
            target=document["target"],
            slo=SloTargets(**document["slo"]),
            reference=document["reference"],
            runs=[_run_from(run) for run in document["runs"]],
            definitions=document["definitions"],
            metadata=document["metadata"],
        )
    except (KeyError, TypeError) as exc:
        raise ResultsFormatError(f"{path}: malformed results: {exc!r}") from None


def _run_document(run: RunResult, token_gaps: bool) -> dict[str, Any]:
    return {
        "cluster": run.cluster,
        "shape": run.shape,
        "policy": run.policy,
        "gpus": run.gpus,
        "goodput": run.goodput,
        "goodput_per_gpu": run.goodput_per_gpu,
        "tail_goodput": run.tail_goodput,
        "p90_goodput": run.p90_goodput,
        "notes": run.notes,
        "machine_limited_stages": run.machine_limited_stages,
        "stages": [asdict(stage) for stage in run.stages],
        "records": [_record_document(record, token_gaps) for record in run.records],
    }


_RECORD_FIELDS = tuple(f.name for f in fields(RequestRecord))


def _record_document(record: RequestRecord, token_gaps: bool) -> dict[str, Any]:
    """A record's fields (`asdict` without its deep copy: a run holds millions of gaps)."""
    document = {name: getattr(record, name) for name in _RECORD_FIELDS}
    if not token_gaps:
        document["itl_s"] = []
    return document


def _run_from(document: dict[str, Any]) -> RunResult:
    return RunResult(
        cluster=document["cluster"],
        shape=document["shape"],
        policy=document["policy"],
        gpus=document["gpus"],
        stages=[_stage_from(stage) for stage in document["stages"]],
        records=[RequestRecord(**record) for record in document["records"]],
        goodput=document["goodput"],
        notes=document["notes"],
        machine_limited_stages=document["machine_limited_stages"],
        tail_goodput=document.get("tail_goodput"),
        p90_goodput=document.get("p90_goodput"),
    )


def _stage_from(document: dict[str, Any]) -> StageSummary:
    latencies = {name: Percentiles(**document[name]) for name in ("ttft_s", "itl_s", "e2e_s")}
    return StageSummary(**{**document, **latencies})
