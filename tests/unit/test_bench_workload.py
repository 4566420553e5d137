"""Workload files and the requests generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.generate import build_prompts, build_requests, schedule
from bench.workload import WORKLOAD_DIR, WorkloadError, load_workload
from simulator.tokenizer import SyntheticTokenizer

SHIPPED = sorted(p.stem for p in WORKLOAD_DIR.glob("*.yaml"))
SHARED_WORKLOADS = Path(__file__).resolve().parents[3] / "shared" / "workloads"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_workload_loads(name: str) -> None:
    workload = load_workload(name)

    assert workload.name == name
    assert workload.load.stages


@pytest.mark.skipif(not SHARED_WORKLOADS.exists(), reason="shared workloads not present")
@pytest.mark.parametrize("path", sorted(SHARED_WORKLOADS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_copies_match_the_published_workloads(path: Path) -> None:
    assert (WORKLOAD_DIR / path.name).read_text() == path.read_text()


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("name: x\n", "model"),
        (
            "name: x\nmodel: m\nengine_profile: p\ngpus: 1\nclusters: {a: {both: 1}}\n"
            "data: {type: zipf, seed: 1}\nload: {type: poisson, stages: [{rate: 1, duration: 1}]}"
            "\nslo: {ttft_ms: 1, itl_ms: 1}\n",
            "data",
        ),
        (
            "name: x\nmodel: m\nengine_profile: p\ngpus: 1\nclusters: {a: {both: 1, decode: 1}}\n"
            "data: {type: random, num_prompts: 1, input_len: 1, output_len: 1}\n"
            "load: {type: poisson, stages: [{rate: 1, duration: 1}]}\nslo: {ttft_ms: 1, itl_ms: 1}",
            "clusters.a",
        ),
    ],
)
def test_invalid_workloads_name_the_field(tmp_path: Path, document: str, field: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_text(document)

    with pytest.raises(WorkloadError, match=field):
        load_workload(str(path))


def test_unknown_workload_lists_the_shipped_ones() -> None:
    with pytest.raises(WorkloadError, match="shared-prefix-small"):
        load_workload("nope")


def test_generation_is_deterministic_and_exact() -> None:
    workload = load_workload("shared-prefix-small")
    first, second = build_prompts(workload), build_prompts(workload)
    stages = schedule(workload)
    requests = build_requests(workload, first, stages)

    assert first == second
    assert requests == build_requests(workload, second, stages)
    tokenizer = SyntheticTokenizer()
    for index in (0, 1, 5, 749):
        assert len(tokenizer.encode(first.prompts[index])) == first.tokens[index] == 7200


def test_a_group_shares_its_system_prompt_and_nothing_else() -> None:
    workload = load_workload("shared-prefix-small")
    prompts = build_prompts(workload)
    system_chars = len(prompts.prompts[0]) - len(prompts.prompts[0].split(" ", 6001)[-1])

    same_group = [p for p, g in zip(prompts.prompts, prompts.groups, strict=True) if g == 0]
    other_group = next(p for p, g in zip(prompts.prompts, prompts.groups, strict=True) if g == 1)

    assert len(same_group) == 5
    assert all(p[:system_chars] == same_group[0][:system_chars] for p in same_group)
    assert len({p[system_chars:] for p in same_group}) == 5
    assert other_group[:40] != same_group[0][:40]


def test_poisson_stages_hold_about_rate_times_duration() -> None:
    workload = load_workload("shared-prefix-16gpu")
    requests = build_requests(workload, build_prompts(workload), schedule(workload))

    for index, stage in enumerate(workload.load.stages):
        count = sum(1 for r in requests if r.stage == index)
        expected = stage.rate * stage.duration
        assert abs(count - expected) < 4 * expected**0.5 + 2, (index, count, expected)
    assert [r.arrival_s for r in requests] == sorted(r.arrival_s for r in requests)
    assert sum(1 for r in requests if r.stage == -1) > 0  # the warm-up comes first


def test_quick_schedule_keeps_three_short_stages() -> None:
    workload = load_workload("shared-prefix-small")

    stages = schedule(workload, quick=True)

    assert [index for index, _ in stages] == [0, 3, 6]
    assert all(stage.duration <= 5 for _, stage in stages)
    assert stages[-1][1].rate == workload.load.stages[-1].rate
