"""The requests of a workload: deterministic prompts and Poisson arrival times.

Everything is drawn from generators seeded by the workload's `seed`, so every policy and
cluster sees the same request sequence. Prompts are built from the synthetic tokenizer's
vocabulary (one token per word, see `simulator/tokenizer.py`), so prompt lengths are exact
on simulated pods: a shared-prefix prompt is its group's system prompt (identical text for
every prompt of the group) followed by its own question; groups share nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.workload import RandomData, SharedPrefixData, Stage, Workload
from simulator.tokenizer import SYNTHETIC_WORDS


@dataclass(frozen=True, slots=True)
class BenchRequest:
    request_id: str
    stage: int
    """Index into the workload's stages; -1 for warm-up."""
    arrival_s: float
    """Model seconds from the start of the run."""
    prompt_index: int
    max_tokens: int
    group: int | None = None


@dataclass(frozen=True, slots=True)
class PromptSet:
    """The distinct prompts of a workload and their token counts."""

    prompts: tuple[str, ...]
    tokens: tuple[int, ...]
    groups: tuple[int | None, ...]


def _text(rng: random.Random, num_tokens: int) -> str:
    """`num_tokens` synthetic words, each one token, with a leading space."""
    return "".join(" " + rng.choice(SYNTHETIC_WORDS) for _ in range(num_tokens))


def build_prompts(workload: Workload) -> PromptSet:
    data = workload.data
    rng = random.Random(f"{data.seed}:prompts")
    prompts: list[str] = []
    tokens: list[int] = []
    groups: list[int | None] = []
    if isinstance(data, SharedPrefixData):
        for group in range(data.num_groups):
            system = _text(rng, data.system_prompt_len)
            for _ in range(data.prompts_per_group):
                prompts.append(system + _text(rng, data.question_len))
                tokens.append(data.system_prompt_len + data.question_len)
                groups.append(group)
    else:
        assert isinstance(data, RandomData)
        for _ in range(data.num_prompts):
            prompts.append(_text(rng, data.input_len))
            tokens.append(data.input_len)
            groups.append(None)
    return PromptSet(tuple(prompts), tuple(tokens), tuple(groups))


def _arrivals(rng: random.Random, stage: Stage, start: float) -> list[float]:
    times: list[float] = []
    clock = start
    while True:
        clock += rng.expovariate(stage.rate)
        if clock >= start + stage.duration:
            return times
        times.append(clock)


def build_requests(
    workload: Workload, prompts: PromptSet, stages: list[tuple[int, Stage]]
) -> list[BenchRequest]:
    """Poisson arrivals per stage, one after the other, each picking a prompt at random."""
    rng = random.Random(f"{workload.data.seed}:arrivals")
    requests: list[BenchRequest] = []
    start = 0.0
    for stage_index, stage in stages:
        for arrival in _arrivals(rng, stage, start):
            prompt_index = rng.randrange(len(prompts.prompts))
            requests.append(
                BenchRequest(
                    request_id=f"{workload.name}-{len(requests):06d}",
                    stage=stage_index,
                    arrival_s=arrival,
                    prompt_index=prompt_index,
                    max_tokens=workload.data.output_len,
                    group=prompts.groups[prompt_index],
                )
            )
        start += stage.duration
    return requests


def schedule(workload: Workload, *, quick: bool = False) -> list[tuple[int, Stage]]:
    """(index, stage) pairs to run, warm-up first as index -1.

    Quick mode keeps the lowest, middle and highest stages, each at most 5 s, no warm-up."""
    stages = list(enumerate(workload.load.stages))
    if quick:
        picked = sorted({0, len(stages) // 2, len(stages) - 1})
        return [(i, Stage(rate=stages[i][1].rate, duration=min(5.0, stages[i][1].duration)))
                for i in picked]  # fmt: skip
    if workload.load.warmup is not None:
        stages.insert(0, (-1, workload.load.warmup))
    return stages
