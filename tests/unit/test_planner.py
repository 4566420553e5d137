"""The virtual-time planner: determinism, a hand-computed case, the live objects it drives,
and the recommendation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tandem.bench.generate import (
    BenchRequest,
    build_prompts,
    build_requests,
    schedule,
    stage_starts,
)
from tandem.bench.records import Percentiles, RequestRecord, StageSummary
from tandem.bench.results import RunResult
from tandem.bench.workload import ClusterShape, Workload, load_workload
from tandem.costmodel import profiles
from tandem.costmodel.profiles import StepCoefficients
from tandem.errors import PlanError, WorkloadError
from tandem.kvcache.hashing import external_hash
from tandem.orchestrator.router import Router
from tandem.orchestrator.scheduling.config import load_config_file
from tandem.orchestrator.scheduling.plugins import builtin_registry
from tandem.orchestrator.scheduling.scheduler import Scheduler
from tandem.planner.cluster import STAGE_LEAD_S, PathModel, VirtualCluster
from tandem.planner.events import EventLoop
from tandem.planner.run import (
    PlanOptions,
    parse_ratios,
    recommend,
    run_plan,
    scaling_config,
    shapes,
    with_threshold,
)
from tandem.simulator.engine import Engine
from tandem.simulator.request import EngineRequest, RequestOutput

CONFIGS = Path(__file__).resolve().parents[2] / "orchestrator" / "configs"
TINY = Path(__file__).resolve().parents[1] / "e2e" / "data" / "tiny-workload.yaml"
NO_PATH = PathModel(gateway_s=0.0, sidecar_s=0.0)


@pytest.fixture
def fixed_step(monkeypatch: pytest.MonkeyPatch) -> str:
    """A profile whose every step takes exactly 10 ms, whatever it computes."""
    base = profiles.get_profile("llama-3.1-8b-h100-tp1")
    fixed = dataclasses.replace(
        base,
        name="fixed-10ms",
        step=StepCoefficients(t_ovh=0.010, t_w=0.0, c_lin=0.0, c_attn=0.0, c_kv=0.0),
    )
    monkeypatch.setitem(profiles.PROFILES, fixed.name, fixed)
    return fixed.name


def write_workload(folder: Path, profile: str, body: str) -> Workload:
    """A workload file named w for `profile`, loaded as `tandem plan` loads it."""
    path = folder / "w.yaml"
    path.write_text(f"name: w\nmodel: m\nengine_profile: {profile}\n{body}")
    return load_workload(str(path))


def virtual_cluster(
    workload: Workload, cluster: str, profile: str, policy: str = "tandem", **options: Any
) -> VirtualCluster:
    """The workload's `cluster` in virtual time, scheduled by a shipped policy."""
    config = load_config_file(CONFIGS / f"{policy}.yaml")
    shape = workload.clusters[cluster]
    return VirtualCluster.build(
        shape, profile, config, build_prompts(workload), workload.model, **options
    )


def test_one_pod_with_fixed_steps_gives_the_hand_computed_latencies(
    tmp_path: Path, fixed_step: str
) -> None:
    # One pod, two requests far apart: each is prefilled in one 10 ms step (400 tokens fit the
    # 8,192-token budget), then decodes one token per 10 ms step.
    workload = write_workload(
        tmp_path, fixed_step,
        "gpus: 1\nclusters: {one: {both: 1}}\n"
        "data: {type: random, num_prompts: 2, input_len: 400, output_len: 5, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 10}]}\n"
        "slo: {ttft_ms: 100, itl_ms: 20}\n",
    )  # fmt: skip
    requests = [
        BenchRequest("a", 0, 0.5, 0, 5),
        BenchRequest("b", 0, 3.0, 1, 5),
    ]
    cluster = virtual_cluster(workload, "one", fixed_step, path=NO_PATH)

    records = {r.request_id: r for r in cluster.run(requests)}

    for name in ("a", "b"):
        record = records[name]
        assert record.success
        assert record.ttft_s == pytest.approx(0.010)
        assert record.itl_s == pytest.approx([0.010] * 4)
        assert record.e2e_s == pytest.approx(0.050)
        assert record.output_tokens == 5
        assert record.prompt_tokens == 400
        assert record.cached_tokens == 0
    assert records["b"].sent_s == 3.0


def test_hops_add_to_the_first_token_not_to_the_gaps(tmp_path: Path, fixed_step: str) -> None:
    workload = write_workload(
        tmp_path, fixed_step,
        "gpus: 1\nclusters: {one: {both: 1}}\n"
        "data: {type: random, num_prompts: 1, input_len: 100, output_len: 3, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 10}]}\n"
        "slo: {ttft_ms: 100, itl_ms: 20}\n",
    )  # fmt: skip
    cluster = virtual_cluster(
        workload, "one", fixed_step, "round-robin", path=PathModel(gateway_s=0.002)
    )

    [record] = cluster.run([BenchRequest("a", 0, 1.0, 0, 3)])

    assert record.ttft_s == pytest.approx(0.002 + 0.010 + 0.002)
    assert record.itl_s == pytest.approx([0.010, 0.010])


def test_a_disaggregated_request_is_prefilled_remotely_and_its_kv_transferred(
    tmp_path: Path, fixed_step: str
) -> None:
    workload = write_workload(
        tmp_path, fixed_step,
        "gpus: 2\nclusters: {pd: {prefill: 1, decode: 1}}\n"
        "data: {type: random, num_prompts: 1, input_len: 2000, output_len: 4, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 10}]}\n"
        "slo: {ttft_ms: 100, itl_ms: 20}\n",
    )  # fmt: skip
    # token-load disaggregates every prompt; tandem would prefill on the idle decode pod.
    cluster = virtual_cluster(workload, "pd", fixed_step, "token-load", path=NO_PATH)

    [record] = cluster.run([BenchRequest("a", 0, 1.0, 0, 4)])

    prefill, decode = cluster.pods["prefill-0"].engine, cluster.pods["decode-0"].engine
    transfer = cluster.pods["decode-0"].profile.kv_transfer_seconds(2000 - 1999 % 16 - 1)
    assert record.success
    assert prefill.stats.prompt_tokens == 2000  # the prefill leg ran there
    assert decode.stats.prompt_tokens_by_source["external_kv_transfer"] > 0
    assert decode.stats.prompt_tokens_by_source["local_compute"] == 0
    assert decode.stats.transfer.num_failed_transfers == 0
    # prefill step, transfer (started at the decode pod's step), first decode step
    assert record.ttft_s == pytest.approx(0.010 + transfer + 0.010, abs=0.011)
    assert prefill.pool.usage == 0.0  # the held KV was released after the read


def test_the_same_seed_gives_the_same_records() -> None:
    workload = load_workload(str(TINY))
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))

    def run() -> list[tuple[object, ...]]:
        cluster = virtual_cluster(workload, "pd-1-1", workload.engine_profile, seed=7)
        return [
            (r.request_id, r.ttft_s, r.e2e_s, tuple(r.itl_s), r.cached_tokens, r.success)
            for r in cluster.run(requests)
        ]

    first, second = run(), run()
    assert first == second
    assert len(first) == len(requests)


def test_the_planner_drives_the_live_router_scheduler_and_engines() -> None:
    workload = load_workload(str(TINY))
    config = load_config_file(CONFIGS / "tandem.yaml")
    cluster = VirtualCluster.build(
        workload.clusters["pd-1-1"], workload.engine_profile, config,
        build_prompts(workload), workload.model,
    )  # fmt: skip

    registry = builtin_registry()
    assert type(cluster.router) is Router
    assert type(cluster.router.scheduler) is Scheduler
    for spec in config.plugins:
        assert type(cluster.router.scheduler.plugins[spec.name or spec.type]) is (
            registry.get(spec.type)
        )
    assert all(type(pod.engine) is Engine for pod in cluster.pods.values())
    assert cluster.router.clock() == cluster.loop.now


@pytest.mark.parametrize(
    ("policy", "decider_type"),
    [("tandem", "elastic-pd-decider"), ("token-load", "prefix-based-pd-decider")],
)
def test_threshold_variants_set_the_deciders_threshold(policy: str, decider_type: str) -> None:
    config = load_config_file(CONFIGS / f"{policy}.yaml")
    [before] = [p for p in config.plugins if p.type == decider_type]

    tuned = with_threshold(config, 4096)

    assert tuned is not None
    [decider] = [p for p in tuned.plugins if p.type == decider_type]
    assert decider.parameters == {**(before.parameters or {}), "nonCachedTokens": 4096}
    assert with_threshold(load_config_file(CONFIGS / "round-robin.yaml"), 4096) is None


def test_ratios_must_use_the_workloads_gpus(tmp_path: Path) -> None:
    workload = load_workload("shared-prefix-small")
    options = PlanOptions(workload, ("tandem",), ("aggregated-8",), tmp_path, ratios=((2, 6),))

    assert "pd-2-6" in shapes(options)
    assert shapes(options)["pd-2-6"] == ClusterShape(prefill=2, decode=6)
    with pytest.raises(PlanError, match="uses 6 GPUs; the workload has 8"):
        shapes(dataclasses.replace(options, ratios=((2, 4),)))
    with pytest.raises(PlanError, match="not PREFILL:DECODE"):
        parse_ratios("2-6")


def _run(cluster: str, policy: str, goodput: float, gpus: int = 8) -> RunResult:
    none = Percentiles(None, None, None, None)
    stage = StageSummary(0, goodput, 10, 1, 1, 1.0, 1, 1, 1, 1, none, none, none, 1.0, None,
                         0.0, False)  # fmt: skip
    return RunResult(cluster, {"prefill": 1}, policy, gpus, [stage], [], goodput)


def test_the_recommendation_is_the_most_goodput_per_gpu_with_its_margin() -> None:
    runs = [_run("pd-4-4", "tandem", 40), _run("pd-2-6", "tandem", 50), _run("agg", "rr", 44)]

    best = recommend(runs)

    assert best is not None
    assert (best.cluster, best.policy) == ("pd-2-6", "tandem")
    assert best.margin == pytest.approx(50 / 44 - 1)
    assert "pd-2-6" in best.sentence()


def test_the_plan_picks_the_split_that_fits_a_prefill_heavy_workload(
    tmp_path: Path, fixed_step: str
) -> None:
    # Long prompts, one output token: all the work is prefill, so, with every prompt
    # prefilled remotely (token-load), three prefill pods and one decode pod must beat one
    # prefill pod and three decode pods. (tandem lets the decode pods prefill too.)
    workload = write_workload(
        tmp_path, "llama-3.1-8b-h100-tp1",
        "gpus: 4\nclusters: {pd-1-3: {prefill: 1, decode: 3}}\n"
        "data: {type: random, num_prompts: 50, input_len: 6000, output_len: 2, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 2, duration: 3}, {rate: 5, duration: 3},"
        " {rate: 8, duration: 3}]}\n"
        "slo: {ttft_ms: 600, itl_ms: 100}\n",
    )  # fmt: skip

    plan = run_plan(
        PlanOptions(
            workload, ("token-load",), ("pd-1-3",), tmp_path / "out", ratios=((3, 1),),
            path=NO_PATH,
        )
    )  # fmt: skip

    assert plan.recommendation is not None
    assert plan.recommendation.cluster == "pd-3-1"
    assert (tmp_path / "out" / "report.md").read_text().count("## Recommendation") == 1
    assert (tmp_path / "out" / "results.json").exists()


def test_events_run_in_time_then_scheduling_order() -> None:
    loop = EventLoop()
    seen: list[str] = []
    loop.at(2.0, seen.append, "late")
    loop.at(1.0, seen.append, "first")
    loop.at(1.0, seen.append, "second")
    loop.after(0.5, lambda: loop.after(0.0, seen.append, "nested"))

    loop.run()

    assert seen == ["nested", "first", "second", "late"]
    assert loop.now == 2.0


def test_tandem_plan_writes_results_and_recommends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tandem.cli import main

    code = main(["plan", str(TINY), "--policies", "tandem,round-robin", "--output", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0
    assert "recommended: " in out
    folder = tmp_path / "tiny"
    assert {p.name for p in folder.iterdir()} >= {"results.json", "report.md", "ttft_p50.png"}
    assert "# tandem plan: tiny" in (folder / "report.md").read_text()
    runs = json.loads((folder / "results.json").read_text())["runs"]
    assert all(any(n.startswith("simulated in ") for n in run["notes"]) for run in runs)
    # The shared-prefix workload's stages carry their hit-rate ceilings, as `tandem bench` has them.
    ceilings = [stage["hit_rate_ceiling"] for run in runs for stage in run["stages"]]
    assert all(0 < c < 1 for c in ceilings)
    assert all(s["hit_rate"] <= s["hit_rate_ceiling"] for run in runs for s in run["stages"])
    bounds = [stage["hit_rate_kv_bound"] for run in runs for stage in run["stages"]]
    assert all(0 < b <= c for b, c in zip(bounds, ceilings, strict=True))
    report = (folder / "report.md").read_text()
    stage = runs[0]["stages"][0]
    shown = f"({stage['hit_rate_ceiling'] * 100:.1f} %; {stage['hit_rate_kv_bound'] * 100:.1f} %)"
    assert shown in report


def test_the_inference_perf_harness_isolates_stages_and_repeats_prompts(tmp_path: Path) -> None:
    workload = load_workload(str(TINY))
    options = PlanOptions(
        workload=workload, policies=("tandem",), clusters=("pd-1-1",),
        output=tmp_path, harness="inference-perf",
    )  # fmt: skip

    plan = run_plan(options)

    records = sorted(plan.results.runs[0].records, key=lambda r: r.sent_s)
    first_stage = [r for r in records if r.stage == 0]
    second_stage = [r for r in records if r.stage == 1]
    first_end = max(r.sent_s + (r.e2e_s or 0.0) for r in first_stage)
    assert min(r.sent_s for r in second_stage) >= first_end + STAGE_LEAD_S
    # periodic work left at a stage's end (lease heartbeats) holds back no arrival
    assert all(r.lag_s == 0 for r in records)
    # 3 groups x 2 prompts: later requests find their whole prompt cached
    repeats = [r for r in records[6:] if r.cached_tokens]
    assert any(r.cached_tokens and r.cached_tokens > 600 for r in repeats)
    assert "`inference-perf`" in (tmp_path / "report.md").read_text()


def test_tandem_plan_refuses_a_split_of_other_gpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tandem.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["plan", str(TINY), "--ratios", "2:2", "--output", str(tmp_path)])

    assert exit.value.code == 2
    assert "tandem: --ratios 2:2 uses 4 GPUs; the workload has 2" in capsys.readouterr().err


def test_comparison_judges_each_stage_within_the_tolerance() -> None:
    from tandem.bench.results import BenchResults, SloTargets
    from tandem.planner.compare import compare_runs, markdown

    def results(rps: float, ttft: float, limited: bool = False) -> BenchResults:
        run = _run("agg", "tandem", rps)
        stage = dataclasses.replace(
            run.stages[0], requests_per_s=rps, ttft_s=Percentiles(ttft, None, None, None),
            machine_limited=limited,
        )  # fmt: skip
        run.stages = [stage]
        return BenchResults("w", "m", 6.0, None, SloTargets(1, 1), runs=[run])

    [close] = compare_runs(results(10.0, 0.100), results(11.0, 0.110))
    [far] = compare_runs(results(10.0, 0.100), results(10.0, 0.200))

    assert close.agrees
    assert close.throughput_error == pytest.approx(0.10)
    assert not far.agrees
    assert far.ttft_error == pytest.approx(1.0)
    assert "1 of 1 judged stages agree" in markdown([close], Path("r.json"))


def test_parallel_runs_give_the_same_results_as_one_process(tmp_path: Path) -> None:
    workload = load_workload(str(TINY))
    options = PlanOptions(
        workload, ("tandem", "round-robin"), ("pd-1-1",), tmp_path / "one", seed=3
    )

    alone = run_plan(options)
    parallel = run_plan(dataclasses.replace(options, output=tmp_path / "two", jobs=2))

    def key(plan: object) -> list[tuple[str, list[tuple[object, ...]]]]:
        assert hasattr(plan, "results")
        return [
            (run.policy, [(r.request_id, r.ttft_s, r.e2e_s) for r in run.records])
            for run in plan.results.runs
        ]

    assert key(alone) == key(parallel)
    assert [run.policy for run in parallel.results.runs] == ["tandem", "round-robin"]


def test_a_pod_hands_over_the_first_token_at_once_and_the_rest_at_the_end(
    tmp_path: Path, fixed_step: str
) -> None:
    workload = write_workload(
        tmp_path, fixed_step,
        "gpus: 1\nclusters: {one: {both: 1}}\n"
        "data: {type: random, num_prompts: 1, input_len: 400, output_len: 5, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 10}]}\n"
        "slo: {ttft_ms: 100, itl_ms: 20}\n",
    )  # fmt: skip
    cluster = virtual_cluster(workload, "one", fixed_step, path=NO_PATH)
    calls: list[tuple[object, ...]] = []

    def handler(output: RequestOutput, times: Sequence[float]) -> None:
        calls.append((cluster.loop.now, len(output.new_token_ids), output.finished, list(times)))

    request = EngineRequest("r", list(range(400)), max_tokens=5, arrival_time=0.0)
    cluster.pods["pod-0"].submit(request, handler)
    cluster.loop.run()

    assert calls == [
        (pytest.approx(0.010), 1, False, pytest.approx([0.010])),
        (pytest.approx(0.050), 4, True, pytest.approx([0.020, 0.030, 0.040, 0.050])),
    ]


def test_requests_still_open_at_the_drain_limit_fail_with_504(
    tmp_path: Path, fixed_step: str
) -> None:
    workload = write_workload(
        tmp_path, fixed_step,
        "gpus: 1\nclusters: {one: {both: 1}}\n"
        "data: {type: random, num_prompts: 1, input_len: 100, output_len: 50, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 10}]}\n"
        "slo: {ttft_ms: 100, itl_ms: 20}\n",
    )  # fmt: skip
    cluster = virtual_cluster(workload, "one", fixed_step, path=NO_PATH)

    [record] = cluster.run([BenchRequest("a", 0, 1.0, 0, 50)], drain_limit_s=0.1)

    assert not record.success
    assert record.status == 504
    assert 9 <= record.output_tokens <= 10  # 0.1 s of 10 ms steps
    state = cluster.router.store.state("pod-0")
    assert state is not None
    assert state.in_flight == 0  # the router's count was released


def test_isolated_stages_start_when_the_previous_stage_has_drained(
    tmp_path: Path, fixed_step: str
) -> None:
    # Stage 0 (nominally 0-1 s) holds a request that decodes for 0.5 s past the stage's end;
    # isolated, stage 1 starts only after it has ended, its arrivals shifted by the wait.
    workload = write_workload(
        tmp_path, fixed_step,
        "gpus: 1\nclusters: {one: {both: 1}}\n"
        "data: {type: random, num_prompts: 2, input_len: 100, output_len: 100, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 1}, {rate: 1, duration: 1}]}\n"
        "slo: {ttft_ms: 100, itl_ms: 20}\n",
    )  # fmt: skip
    requests = [BenchRequest("a", 0, 0.9, 0, 100), BenchRequest("b", 1, 1.2, 1, 100)]

    def run(starts: dict[int, float] | None) -> dict[str, RequestRecord]:
        cluster = virtual_cluster(workload, "one", fixed_step, path=NO_PATH)
        return {r.request_id: r for r in cluster.run(requests, stage_starts=starts)}

    continuous = run(None)
    isolated = run(stage_starts(schedule(workload)))

    a_end = isolated["a"].sent_s + (isolated["a"].e2e_s or 0.0)
    assert a_end == pytest.approx(0.9 + 1.0, abs=0.02)  # 100 steps of 10 ms
    assert continuous["b"].sent_s == pytest.approx(1.2)  # overlaps a
    # Stage 1 starts when a ended; b keeps its 0.2 s offset into the stage after the lead.
    assert isolated["b"].sent_s == pytest.approx(a_end + STAGE_LEAD_S + 0.2)
    assert isolated["b"].scheduled_s == isolated["b"].sent_s  # no generator lag


@pytest.fixture
def small_kv(monkeypatch: pytest.MonkeyPatch) -> str:
    """An 8B profile whose pods hold only 5k tokens of KV, so load preempts."""
    base = profiles.get_profile("llama-3.1-8b-h100-tp1")
    small = dataclasses.replace(base, name="small-kv", kv_capacity_tokens=5_000)
    monkeypatch.setitem(profiles.PROFILES, small.name, small)
    return small.name


@pytest.mark.parametrize("cluster", ["aggregated-2", "pd-1-1"])
def test_steady_decode_runs_give_the_records_of_step_by_step_simulation(
    tmp_path: Path, small_kv: str, cluster: str
) -> None:
    workload = write_workload(
        tmp_path, small_kv,
        "gpus: 2\nclusters: {aggregated-2: {both: 2}, pd-1-1: {prefill: 1, decode: 1}}\n"
        "data: {type: shared_prefix, num_groups: 4, prompts_per_group: 2,\n"
        "       system_prompt_len: 600, question_len: 60, output_len: 200, seed: 5}\n"
        "load: {type: poisson, stages: [{rate: 5, duration: 4}, {rate: 40, duration: 2}]}\n"
        "slo: {ttft_ms: 1000, itl_ms: 50}\n",
    )  # fmt: skip
    prompts = build_prompts(workload)
    stages = schedule(workload)
    requests = build_requests(workload, prompts, stages)

    steady_steps = 0

    def run(fast_forward: bool) -> tuple[list[tuple[object, ...]], int, int]:
        nonlocal steady_steps
        virtual = virtual_cluster(workload, cluster, small_kv, seed=3, fast_forward=fast_forward)
        records = virtual.run(requests, stage_starts=stage_starts(stages))
        engines = [pod.engine for pod in virtual.pods.values()]
        steady_steps = sum(pod.steady_steps for pod in virtual.pods.values())
        fields = [
            (r.request_id, r.sent_s, r.ttft_s, r.e2e_s, tuple(r.itl_s), r.output_tokens,
             r.cached_tokens, r.status)
            for r in records
        ]  # fmt: skip
        return (
            sorted(fields),
            sum(e.stats.num_preemptions for e in engines),
            sum(e.stats.generation_tokens for e in engines),
        )

    stepped, preemptions, tokens = run(fast_forward=False)
    assert preemptions > 0  # the case covers KV shortage, not only steady decoding
    assert steady_steps == 0
    assert run(fast_forward=True) == (stepped, preemptions, tokens)
    assert steady_steps > 0  # and steady decode runs were taken


def test_a_quick_live_run_is_replayed_quick() -> None:
    from tandem.bench.results import BenchResults, SloTargets
    from tandem.planner.compare import ran_quick

    workload = load_workload("shared-prefix-small")
    none = Percentiles(None, None, None, None)

    def summary(index: int, duration: float) -> StageSummary:
        return StageSummary(index, 5.0, duration, 1, 1, 1.0, 1, 1, 1, 1, none, none, none, 1.0,
                            None, 0.0, False)  # fmt: skip

    def live(stages: list[tuple[int, float]]) -> BenchResults:
        summaries = [summary(index, duration) for index, duration in stages]
        run = RunResult("aggregated-8", {"both": 8}, "tandem", 8, summaries, [], 0.0)
        return BenchResults("w", "m", 6.0, None, SloTargets(1, 1), runs=[run])

    quick = [(index, stage.duration) for index, stage in schedule(workload, quick=True)]
    full = [(index, stage.duration) for index, stage in enumerate(workload.load.stages)]

    assert ran_quick(live(quick), workload)
    assert not ran_quick(live(full), workload)


def test_pools_may_run_their_own_engine_profiles(tmp_path: Path) -> None:
    """llm-d's P/D guide deploys TP1 prefill and TP4 decode pods: each pool gets its own
    profile, its GPUs count by that profile's TP, and a KV read is bounded by the slower
    side's links."""
    workload = write_workload(
        tmp_path, "gpt-oss-120b-h200-tp1",
        "engine_profiles: {decode: gpt-oss-120b-h200-tp4}\n"
        "gpus: 8\nclusters: {pd: {prefill: 4, decode: 1}, agg: {both: 8}}\n"
        "data: {type: random, num_prompts: 4, input_len: 3000, output_len: 4, seed: 1}\n"
        "load: {type: constant, stages: [{rate: 2, duration: 2}]}\n"
        "slo: {ttft_ms: 1000, itl_ms: 20}\n",
    )  # fmt: skip
    cluster = VirtualCluster.build(
        workload.clusters["pd"], workload.role_profiles(),
        load_config_file(CONFIGS / "token-load.yaml"), build_prompts(workload), workload.model,
        path=NO_PATH,
    )  # fmt: skip
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))

    records = cluster.run(requests)

    assert [r.sent_s for r in sorted(records, key=lambda r: r.sent_s)] == [0.0, 0.5, 1.0, 1.5]
    assert all(r.success for r in records)
    assert {pod.profile.name for name, pod in cluster.pods.items() if name.startswith("d")} == {
        "gpt-oss-120b-h200-tp4"
    }
    assert {pod.profile.name for name, pod in cluster.pods.items() if name.startswith("p")} == {
        "gpt-oss-120b-h200-tp1"
    }
    assert workload.gpus_of(workload.clusters["pd"]) == 8
    decode = cluster.pods["decode-0"].engine.stats.transfer.xfer_time
    one_rail = profiles.get_profile("gpt-oss-120b-h200-tp1").kv_transfer_seconds(3000)
    four_rails = profiles.get_profile("gpt-oss-120b-h200-tp4").kv_transfer_seconds(3000)
    assert decode.count == 4
    assert decode.total == pytest.approx(4 * one_rail, rel=0.01)
    assert one_rail > 1.5 * four_rails


def test_a_cluster_must_fill_the_workload_s_gpus(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cluster pd occupies 9 GPUs, not the workload's 8"):
        write_workload(
            tmp_path, "gpt-oss-120b-h200-tp1",
            "engine_profiles: {decode: gpt-oss-120b-h200-tp4}\n"
            "gpus: 8\nclusters: {pd: {prefill: 5, decode: 1}}\n"
            "data: {type: random, num_prompts: 4, input_len: 3000, output_len: 4, seed: 1}\n"
            "load: {type: poisson, stages: [{rate: 2, duration: 2}]}\n"
            "slo: {ttft_ms: 1000, itl_ms: 20}\n",
        )  # fmt: skip


def test_the_precise_index_follows_the_virtual_pods_events() -> None:
    # The virtual pods publish their KV events as the live ones do; after the run the precise
    # index holds exactly the blocks each pod's cache holds, and the prefixes were routed to
    # where they were.
    workload = load_workload(str(TINY))
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))
    cluster = virtual_cluster(workload, "aggregated-2", workload.engine_profile, "tandem-precise")

    records = cluster.run(requests)
    cluster.loop.run(until=cluster.loop.now + 0.1)  # the last step's events are on their way

    precise = cluster.router.scheduler.precise
    assert precise is not None
    assert precise.index.num_hashes > 0
    for name, pod in cluster.pods.items():
        held = {external_hash(h) for h in pod.engine.pool._cached}
        assert precise.index.held(name) == held
        assert precise.index.authoritative(name, cluster.loop.now)
    assert all(r.success for r in records)
    groups_seen = len({r.group for r in requests})
    assert sum((r.cached_tokens or 0) > 0 for r in records) >= len(records) - 2 * groups_seen


def test_a_conversation_s_next_turn_waits_for_the_answer_and_the_think_time(
    tmp_path: Path,
) -> None:
    workload = write_workload(
        tmp_path, "llama-3.1-8b-h100-tp1",
        "gpus: 2\nclusters: {aggregated-2: {both: 2}}\n"
        "data: {type: multi_turn, system_prompt_len: 500, user_len: 50, output_len: 40,"
        " turns: 4, think_time_s: 1, seed: 2}\n"
        "load: {type: poisson, stages: [{rate: 2, duration: 4}]}\n"
        "slo: {ttft_ms: 1000, itl_ms: 50}\n",
    )  # fmt: skip
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))
    cluster = virtual_cluster(workload, "aggregated-2", workload.engine_profile, "tandem-precise")

    records = {r.request_id: r for r in cluster.run(requests)}

    assert len(records) == len(requests)
    assert all(r.success for r in records.values())
    for request in requests:
        record = records[request.request_id]
        if request.follows is None:
            assert record.sent_s == pytest.approx(request.arrival_s)
            continue
        before = records[requests[request.follows].request_id]
        assert before.e2e_s is not None
        ended = before.sent_s + before.e2e_s
        assert record.sent_s == pytest.approx(ended + request.think_s)
        assert record.scheduled_s == pytest.approx(record.sent_s)
        # The pod that served the previous turn still holds its prompt: all but the last,
        # partial block is a hit.
        assert record.cached_tokens is not None
        assert record.cached_tokens >= prompts.tokens(requests[request.follows]) - 16


def test_the_desired_replicas_of_each_pool_track_the_load_of_the_ladder(tmp_path: Path) -> None:
    # Long prompts, all prefilled remotely: the prefill pool's need grows with the rate,
    # while a few output tokens leave one decode pod enough.
    workload = write_workload(
        tmp_path, "llama-3.1-8b-h100-tp1",
        "gpus: 2\nclusters: {pd-1-1: {prefill: 1, decode: 1}}\n"
        "data: {type: random, num_prompts: 200, input_len: 6000, output_len: 4, seed: 1}\n"
        "load: {type: poisson, stages: [{rate: 1, duration: 8}, {rate: 4, duration: 8},"
        " {rate: 10, duration: 8}]}\n"
        "slo: {ttft_ms: 1000, itl_ms: 50}\n",
    )  # fmt: skip

    plan = run_plan(PlanOptions(workload, ("token-load",), ("pd-1-1",), tmp_path / "out"))

    [run] = plan.results.runs
    desired = [stage.desired_replicas or {} for stage in run.stages]
    prefill = [pools["prefill"] for pools in desired]
    assert prefill == sorted(prefill)
    assert prefill[0] <= 1.5 < 2.5 <= prefill[-1]
    assert max(pools["decode"] for pools in desired) <= 1.5
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"decode {desired[0]['decode']:.1f} of 1, prefill {prefill[0]:.1f} of 1" in report
    assert (tmp_path / "out" / "desired_replicas.png").stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"][0]["stages"][-1]["desired_replicas"]["prefill"] == prefill[-1]


def test_an_elastic_cluster_moves_a_pod_to_the_busier_pool_and_back(tmp_path: Path) -> None:
    # Prefill-heavy minutes, then decode-heavy ones, on 4 pods that start 2:2 and may go
    # to 3:1 or 1:3.
    workload = write_workload(
        tmp_path, "llama-3.1-8b-h100-tp1",
        "gpus: 4\nclusters:\n  elastic-4:\n    prefill: 2\n    decode: 2\n"
        "    rebalance: {prefill: {min: 1, max: 3}, decode: {min: 1, max: 3}, interval_s: 20,\n"
        "                min_load: 0.5, sustain_s: 5}\n"
        "data: {type: shifting_mix, phase_s: 90, seed: 3, phases: [{input_len: 6000, "
        "output_len: 20}, {input_len: 300, output_len: 1500}]}\n"
        "load: {type: poisson, stages: [{rate: 12, duration: 180}]}\n"
        "slo: {ttft_ms: 1000, itl_ms: 25}\n",
    )  # fmt: skip
    cluster = virtual_cluster(
        workload, "elastic-4", workload.engine_profile,
        path=PathModel(restart_s=10.0), scaling=scaling_config(workload),
        rebalance=workload.clusters["elastic-4"].rebalance,
    )  # fmt: skip
    requests = build_requests(workload, cluster.prompts, schedule(workload))

    records = cluster.run(requests)

    moves = [(m.move.target, m.started_s) for m in cluster.moves]
    # The first phase moves a decode pod to prefill, the second moves pods back.
    assert moves[0][0] == "prefill"
    assert moves[0][1] < 90
    assert any(target == "decode" and started > 90 for target, started in moves)
    assert all(m.ended_s == pytest.approx((m.stopped_s or 0) + 10.0) for m in cluster.moves)
    # Nothing lost across the moves, and every pod ends with its KV free.
    assert len(records) == len(requests)
    assert all(record.success for record in records)
    for pod in cluster.pods.values():
        assert pod.drained()
        assert pod.engine.kv_usage == 0
    assert len(cluster.pods) == 4
    assert {e.name for e in cluster.router.store.endpoints()} == set(cluster.pods)
