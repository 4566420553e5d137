"""Workload files and the requests generated from them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from tandem.bench.ceilings import hit_rate_ceilings, hit_rate_kv_bounds
from tandem.bench.generate import (
    BenchRequest,
    PromptSet,
    build_prompts,
    build_requests,
    schedule,
)
from tandem.bench.workload import WORKLOAD_DIR, SharedPrefixData, Workload, load_workload
from tandem.errors import WorkloadError
from tandem.kvcache.tokenizer import SyntheticTokenizer

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
    """Copies are the published files; a ladder may only be extended past its top stage, in
    the same shape (the workloads ask for that when round-robin is not saturated), and a copy
    may add cluster shapes of the same GPUs and a tail bound to the SLO, changing neither."""
    published = yaml.safe_load(path.read_text())
    shipped = yaml.safe_load((WORKLOAD_DIR / path.name).read_text())
    published_stages = published["load"].pop("stages")
    shipped_stages = shipped["load"].pop("stages")
    added_clusters = {
        name: shipped["clusters"].pop(name)
        for name in list(shipped["clusters"])
        if name not in published["clusters"]
    }
    shipped["slo"].pop("itl_p99_ms", None)

    assert shipped == published
    pods = [
        sum(v for k, v in shape.items() if k != "rebalance") for shape in added_clusters.values()
    ]
    assert pods == [published["gpus"]] * len(pods)
    assert shipped_stages[: len(published_stages)] == published_stages
    appended = shipped_stages[len(published_stages) :]
    rates = [stage["rate"] for stage in [published_stages[-1], *appended]]
    assert rates == sorted(set(rates))
    assert {stage["duration"] for stage in appended} <= {published_stages[-1]["duration"]}


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
    for request in requests[:3]:
        text = first.text(request)
        assert text == second.text(request)
        assert len(tokenizer.encode(text)) == first.tokens(request) == 7200


def test_a_group_shares_its_system_prompt_and_each_request_has_its_own_question() -> None:
    workload = load_workload("shared-prefix-small")
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))
    system = len(prompts.system_prompts[0])

    by_group: dict[int | None, list[str]] = {}
    for request in requests[:600]:
        by_group.setdefault(request.group, []).append(prompts.text(request))
    same = next(texts for texts in by_group.values() if len(texts) >= 3)
    others = [
        texts[0] for group, texts in by_group.items() if texts[0][:system] != same[0][:system]
    ]

    assert all(text[:system] == same[0][:system] for text in same)
    assert len({text[system:] for text in same}) == len(same)  # the questions differ
    assert len(by_group) > 100  # requests spread over the 150 groups
    assert len(others) == len(by_group) - 1  # groups share nothing


def test_random_workload_prompts_are_all_unique() -> None:
    workload = load_workload("low-sharing")
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload, quick=True))

    texts = [prompts.text(request)[:200] for request in requests]
    assert len(set(texts)) == len(texts)
    assert all(prompts.tokens(request) == 2000 for request in requests)


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

    last = len(workload.load.stages) - 1
    assert [index for index, _ in stages] == [0, last // 2, last]
    assert all(stage.duration <= 5 for _, stage in stages)
    assert stages[-1][1].rate == workload.load.stages[-1].rate


def test_prompt_token_ids_are_what_the_synthetic_tokenizer_makes_of_the_text() -> None:
    import random

    from tandem.bench.generate import _word_ids
    from tandem.kvcache.tokenizer import SYNTHETIC_WORDS

    workload = load_workload("shared-prefix-small")
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))
    tokenizer = SyntheticTokenizer()

    for request in requests[:3]:
        text, ids = prompts.text_and_ids(request)
        assert tokenizer.encode(text) == ids
    # the draws are those of random.choice over the vocabulary
    expected = [SYNTHETIC_WORDS.index(random.Random(5).choice(SYNTHETIC_WORDS))]
    assert _word_ids(random.Random(5), 1) == expected


@pytest.mark.parametrize("num_tokens", [63, 64, 65, 1200, 6000, 50_000])
def test_bulk_word_draws_equal_the_loop_and_leave_the_generator_where_it_would(
    num_tokens: int,
) -> None:
    import random

    from tandem.bench.generate import _VOCABULARY, _word_ids

    for seed in ("42:request:7", "42:system-prompts", 5):
        bulk, loop = random.Random(seed), random.Random(seed)
        expected = [loop._randbelow(_VOCABULARY) for _ in range(num_tokens)]  # type: ignore[attr-defined]

        assert _word_ids(bulk, num_tokens) == expected
        assert bulk.getstate() == loop.getstate()  # later draws continue identically
        assert _word_ids(random.Random(seed), num_tokens, advance=False) == expected


def test_a_prompt_pool_repeats_whole_prompts_in_a_shuffled_cycle() -> None:
    workload = load_workload("shared-prefix-small")
    prompts = build_prompts(workload)
    stages = schedule(workload)
    own = build_requests(workload, prompts, stages)
    pooled = build_requests(workload, prompts, stages, prompt_pool=True)
    data = workload.data
    assert isinstance(data, SharedPrefixData)
    size = data.num_groups * data.prompts_per_group

    assert [r.arrival_s for r in pooled] == [r.arrival_s for r in own]  # same offered load
    first_cycle = [r.prompt_slot or 0 for r in pooled[:size]]
    assert all(r.prompt_slot is not None for r in pooled)
    assert sorted(first_cycle) == list(range(size))  # every prompt once per cycle
    assert first_cycle != sorted(first_cycle)  # in a shuffled order
    assert [r.prompt_slot or 0 for r in pooled[size : 2 * size]] == first_cycle
    for request in pooled[:size]:
        assert request.prompt_slot is not None
        assert request.group == request.prompt_slot // data.prompts_per_group
    again = next(r for r in pooled[size:] if r.prompt_slot == pooled[0].prompt_slot)
    assert prompts.text(again) == prompts.text(pooled[0])  # the whole prompt repeats
    assert prompts.text(own[0]) != prompts.text(own[size])  # without a pool it does not


def test_tandem_bench_refuses_per_pool_profiles_it_cannot_start(tmp_path: Path) -> None:
    from tandem.bench.runner import BenchOptions, run_bench

    workload = load_workload("pd-guide-16gpu")
    options = BenchOptions(
        workload=workload, policies=("tandem",), clusters=("pd-8-2",), time_scale=1.0,
        output=tmp_path,
    )  # fmt: skip

    with pytest.raises(WorkloadError, match="tandem plan only"):
        run_bench(options)


def test_constant_load_spaces_arrivals_evenly() -> None:
    workload = load_workload("pd-guide-16gpu")
    requests = build_requests(workload, build_prompts(workload), schedule(workload))

    assert len(requests) == 45 * 120
    assert [r.arrival_s for r in requests[:3]] == pytest.approx([0.0, 1 / 45, 2 / 45])


def test_zipf_popularity_skews_the_groups() -> None:
    base = load_workload("kv-pressure-small")
    assert isinstance(base.data, SharedPrefixData)
    assert base.data.zipf_s == 1.0
    uniform = base.model_copy(update={"data": base.data.model_copy(update={"zipf_s": None})})
    stages = schedule(base)
    skewed = build_requests(base, build_prompts(base), stages)
    flat = build_requests(uniform, build_prompts(uniform), stages)

    counts = Counter(r.group for r in skewed)
    top = sum(n for _, n in counts.most_common(10))
    # Weights 1/k: the 10 most popular of 1,000 groups carry H(10)/H(1000) ≈ 39 % of requests.
    assert 0.33 < top / len(skewed) < 0.45
    assert counts[0] == max(counts.values())
    assert max(Counter(r.group for r in flat).values()) < counts[0] / 5


def test_the_hit_rate_ceiling_counts_each_group_s_first_request_as_a_miss() -> None:
    prompts = PromptSet(seed=0, system_prompts=("a", "b"), own_tokens=25, system_prompt_tokens=75)
    requests = [
        BenchRequest("r0", 0, 0.0, 0, 1, group=0),  # first of group 0: a miss
        BenchRequest("r1", 0, 1.0, 1, 1, group=0),  # 75 of 100 tokens
        BenchRequest("r2", 1, 2.0, 2, 1, group=1),  # first of group 1: a miss
        BenchRequest("r3", 1, 3.0, 3, 1, group=0),  # 75 of 100
        BenchRequest("r4", 1, 4.0, 4, 1, group=1),  # 75 of 100
    ]

    assert hit_rate_ceilings(prompts, requests) == {0: 75 / 200, 1: 150 / 300}
    random_prompts = PromptSet(seed=0, system_prompts=(), own_tokens=10)
    assert hit_rate_ceilings(random_prompts, [BenchRequest("r", 0, 0.0, 0, 1)]) == {}


CHAT = """\
name: chat
model: m
engine_profile: llama-3.1-8b-h100-tp1
gpus: 1
clusters: {one: {both: 1}}
data: {type: multi_turn, system_prompt_len: 40, user_len: 6, output_len: 10, turns: 3,
       think_time_s: 2, seed: 3}
load: {type: poisson, stages: [{rate: 2, duration: 3}, {rate: 4, duration: 2}]}
slo: {ttft_ms: 1000, itl_ms: 50}
"""


def chat_workload(tmp_path: Path, text: str = CHAT) -> Workload:
    path = tmp_path / "chat.yaml"
    path.write_text(text)
    return load_workload(str(path))


def test_a_conversation_s_turns_follow_each_other_and_its_prompt_grows(tmp_path: Path) -> None:
    workload = chat_workload(tmp_path)
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload))

    firsts = [r for r in requests if r.follows is None]
    assert [r.turn for r in firsts] == [0] * len(firsts)
    assert [r.arrival_s for r in firsts] == sorted(r.arrival_s for r in firsts)
    assert len(requests) == 3 * len(firsts)
    tokenizer = SyntheticTokenizer()
    for request in requests:
        text, ids = prompts.text_and_ids(request)
        assert tokenizer.encode(text) == ids
        assert len(ids) == prompts.tokens(request) == 40 + request.turn * 16 + 6
        if request.follows is None:
            assert request.think_s == 0
            continue
        before = requests[request.follows]
        assert (before.conversation, before.turn + 1) == (request.conversation, request.turn)
        assert before.stage == request.stage  # a conversation counts in the stage it began
        assert request.think_s > 0
        assert request.arrival_s == pytest.approx(before.arrival_s + request.think_s)
        # The turn repeats the previous prompt, adds its answer and a new question.
        assert ids[: prompts.tokens(before)] == prompts.text_and_ids(before)[1]
        assert ids[: prompts.shared_tokens(request)] == ids[: 40 + request.turn * 16]
    # Every conversation opens with the same system prompt, and asks its own questions.
    first_ids = [prompts.text_and_ids(r)[1] for r in firsts[:2]]
    assert first_ids[0][:40] == first_ids[1][:40]
    assert first_ids[0][40:] != first_ids[1][40:]
    assert requests == build_requests(workload, build_prompts(workload), schedule(workload))


def test_a_turn_s_ceiling_is_its_previous_prompt(tmp_path: Path) -> None:
    workload = chat_workload(tmp_path)
    prompts = build_prompts(workload)
    requests = [
        BenchRequest("a0", 0, 0.0, 0, 10, conversation=0),
        BenchRequest("a1", 0, 1.0, 1, 10, conversation=0, turn=1, follows=0, think_s=1.0),
        BenchRequest("b0", 1, 1.5, 2, 10, conversation=1),
    ]

    # a0: nothing cached yet (46 tokens); a1: a0's prompt (46 of 62); b0: the system prompt.
    assert hit_rate_ceilings(prompts, requests) == {0: 46 / (46 + 62), 1: 40 / 46}


def test_a_multi_turn_workload_has_no_prompt_pool(tmp_path: Path) -> None:
    workload = chat_workload(tmp_path)
    with pytest.raises(ValueError, match="no fixed prompt pool"):
        build_requests(workload, build_prompts(workload), schedule(workload), prompt_pool=True)


def test_the_kv_bound_is_the_ceiling_when_everything_fits_and_falls_when_it_does_not() -> None:
    workload = load_workload("kv-pressure-small")
    prompts = build_prompts(workload)
    requests = build_requests(workload, prompts, schedule(workload, quick=True))
    ceilings = hit_rate_ceilings(prompts, requests)

    unbounded = hit_rate_kv_bounds(prompts, requests, 10**9)
    assert unbounded == pytest.approx(ceilings)  # 8,000-token system prompts: whole blocks
    pool = hit_rate_kv_bounds(prompts, requests, 4 * 450_000)
    small = hit_rate_kv_bounds(prompts, requests, 450_000)
    assert all(small[s] <= pool[s] <= unbounded[s] for s in ceilings)
    assert sum(small.values()) < sum(pool.values())
    assert hit_rate_kv_bounds(prompts, requests, 8_000) == dict.fromkeys(ceilings, 0.0)


def test_the_kv_bound_of_a_conversation_is_its_previous_prompt_s_whole_blocks(
    tmp_path: Path,
) -> None:
    workload = chat_workload(tmp_path)
    prompts = build_prompts(workload)
    requests = [
        BenchRequest("a0", 0, 0.0, 0, 10, conversation=0),
        BenchRequest("a1", 0, 1.0, 1, 10, conversation=0, turn=1, follows=0, think_s=1.0),
        BenchRequest("b0", 1, 1.5, 2, 10, conversation=1),
    ]

    # Blocks of 16: a1 finds a0's 2 whole blocks (of its 46 tokens); b0 the system prompt's
    # 2 whole blocks (of 40 tokens), the third being partly a0's own question.
    assert hit_rate_kv_bounds(prompts, requests, 10**6, block_size=16) == {
        0: 32 / (46 + 62),
        1: 32 / 46,
    }


def _phases(workload: Workload, requests: list[BenchRequest]) -> list[tuple[int, int]]:
    """Each request's (prompt tokens, max tokens), in arrival order."""
    prompts = build_prompts(workload)
    return [(prompts.tokens(r), r.max_tokens) for r in requests]


def test_a_shifting_mix_alternates_its_phases_within_each_stage() -> None:
    workload = load_workload("shifting-mix-small")
    requests = build_requests(workload, build_prompts(workload), schedule(workload))
    rag, chat = (6000, 100), (1500, 1000)

    first_stage = [r for r in requests if r.stage == 0]
    phase = [int(r.arrival_s // 120) for r in first_stage]
    lengths = _phases(workload, first_stage)
    assert set(phase) == {0, 1}  # a 240 s stage holds two two-minute phases
    assert all(
        length == (rag if p % 2 == 0 else chat) for p, length in zip(phase, lengths, strict=True)
    )
    second = [r for r in requests if r.stage == 1]
    assert _phases(workload, second[:1]) == [rag]  # each stage starts with the first phase
    texts = [build_prompts(workload).text(r)[:200] for r in requests[:200]]
    assert len(set(texts)) == len(texts)  # every prompt its own


def test_a_quick_shifting_mix_walks_every_phase_of_its_shortened_stages() -> None:
    workload = load_workload("shifting-mix-small")
    requests = build_requests(workload, build_prompts(workload), schedule(workload, quick=True))

    for index, _ in schedule(workload, quick=True):
        lengths = set(_phases(workload, [r for r in requests if r.stage == index]))
        assert lengths == {(6000, 100), (1500, 1000)}, index
    with pytest.raises(ValueError, match="no fixed prompt pool"):
        build_requests(workload, build_prompts(workload), schedule(workload), prompt_pool=True)
