"""The requests of a workload: deterministic prompts and Poisson arrival times.

Everything is drawn from generators seeded by the workload's `seed`, so every policy and
cluster sees the same request sequence. Prompts are built from the synthetic tokenizer's
vocabulary (one token per word, see `simulator/tokenizer.py`), so prompt lengths are exact
on simulated pods.

* `shared_prefix`: each request belongs to a group (one of `num_groups`, uniformly or, with
  `zipf_s`, with Zipf-skewed popularity) and is that group's system prompt — identical text
  for the whole group — followed by a question of its own, so at most system_prompt_len /
  (system_prompt_len + question_len) of the prompt tokens can be cache hits (the ceiling the
  workloads README states; `tandem.bench.ceilings` also counts each group's first request as
  a miss). `prompts_per_group` only sizes the prompt pool below.
* `random`: every request's prompt is unique.
* `multi_turn`: conversations. Each Poisson arrival starts one, whose `turns` requests are
  chained: turn t+1 (`follows` = turn t's index) is sent `think_s` after turn t's answer
  ended, by the client in `tandem bench` and by the virtual cluster in `tandem plan`. Turn
  t's prompt is the shared system prompt, the earlier turns' questions and answers, then
  its own question. The answers in the history are the conversation's own text, not what
  the pod generated, so every policy gets identical prompts; a cache can therefore serve a
  turn its previous turn's prompt, not the previous answer's blocks (`tandem.bench.ceilings`).

With a prompt pool (`build_requests(..., prompt_pool=True)`) requests instead cycle, in a
seeded shuffled order, through a fixed set of prompts — `num_groups` x `prompts_per_group`
(or `num_prompts`) — as inference-perf's generators do, so whole prompts repeat.

Prompt texts are made when a request is sent (`PromptSet.text`), from the request's own
seed, so even the 16-GPU ladder (17k requests of 7,200 tokens) needs no gigabytes up front.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tandem.bench.workload import (
    MultiTurnData,
    RandomData,
    SharedPrefixData,
    ShiftingMixData,
    Stage,
    Workload,
)
from tandem.kvcache.tokenizer import SYNTHETIC_WORDS

_VOCABULARY = len(SYNTHETIC_WORDS)
_SPACED = tuple(" " + word for word in SYNTHETIC_WORDS)


@dataclass(frozen=True, slots=True)
class BenchRequest:
    request_id: str
    stage: int
    """Index into the workload's stages; -1 for warm-up."""
    arrival_s: float
    """Model seconds from the start of the run."""
    index: int
    """Position in the run; seeds the request's own text."""
    max_tokens: int
    group: int | None = None
    prompt_slot: int | None = None
    """Which prompt of the workload's fixed pool it repeats; None: a question of its own."""
    conversation: int | None = None
    """The conversation it is a turn of (multi-turn workloads)."""
    turn: int = 0
    follows: int | None = None
    """Index of the request whose answer this one waits for; None: sent at `arrival_s`."""
    think_s: float = 0.0
    """Model seconds between the end of `follows`'s answer and this request."""
    prompt_len: int | None = None
    """Tokens of its own where they differ from request to request (a shifting mix)."""


def _word_ids(rng: random.Random, num_tokens: int, *, advance: bool = True) -> list[int]:
    """`num_tokens` draws of a word; a word's index is its synthetic token id.

    The same draws as `rng.choice(SYNTHETIC_WORDS)`, which CPython implements as
    `seq[rng._randbelow(len(seq))]`, taken as indices so a simulation gets token ids without
    tokenizing text; a test holds the two equal. Long draws run in bulk (`_bulk_word_ids`).
    `advance=False`: the caller discards `rng`, which then need not be left where the draws
    would leave it."""
    if num_tokens >= _BULK_FROM:
        return _bulk_word_ids(rng, num_tokens, advance=advance)
    below = rng._randbelow  # type: ignore[attr-defined]
    return [below(_VOCABULARY) for _ in range(num_tokens)]


_BULK_FROM = 64
_BITS = _VOCABULARY.bit_length()
_GENERATOR = np.random.MT19937(0)
"""Reused for bulk draws, its state set from the caller's each time (a new one costs more
than the draws of a question)."""


def _bulk_word_ids(rng: random.Random, num_tokens: int, *, advance: bool = True) -> list[int]:
    """`_randbelow(_VOCABULARY)` `num_tokens` times, computed with numpy, leaving `rng` in
    the state the loop would (unless `advance` is False).

    CPython's `random` is MT19937; `_randbelow(n)` takes `getrandbits(k)` (k = n's bit
    length), which is the generator's next 32-bit output shifted right by 32 - k, and draws
    again while the result is ≥ n (CPython: Lib/random.py, Modules/_randommodule.c). numpy's
    MT19937 started from the same state yields the same 32-bit outputs (`random_raw`)."""
    version, internal, gauss = rng.getstate()
    generator = _GENERATOR
    _start_at(generator, internal)
    # Enough outputs that the accepted ones very likely suffice; draw more if not.
    expected = num_tokens * (1 << _BITS) / _VOCABULARY
    parts: list[np.ndarray] = []
    accepted = 0
    while accepted < num_tokens:
        draws = generator.random_raw(int(expected * 1.05) + 64) >> (32 - _BITS)
        parts.append(draws)
        accepted += int(np.count_nonzero(draws < _VOCABULARY))
    draws = np.concatenate(parts)
    positions = np.flatnonzero(draws < _VOCABULARY)[:num_tokens]
    if advance:
        _start_at(generator, internal)  # rewind, then take exactly what the loop took
        generator.random_raw(int(positions[-1]) + 1)
        after = generator.state["state"]
        rng.setstate((version, (*after["key"].tolist(), int(after["pos"])), gauss))
    ids: list[int] = draws[positions].tolist()
    return ids


def _start_at(generator: np.random.MT19937, internal: tuple[int, ...]) -> None:
    """Put numpy's MT19937 in the state `random.getstate()` gives as its second item."""
    key = np.array(internal[:-1], dtype=np.uint32)
    generator.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": internal[-1]}}


def _words(ids: Sequence[int]) -> str:
    """The text of synthetic word ids, each with a leading space."""
    return "".join([_SPACED[i] for i in ids])


def _text(rng: random.Random, num_tokens: int) -> str:
    """`num_tokens` synthetic words, each one token, with a leading space."""
    return _words(_word_ids(rng, num_tokens))


@dataclass(frozen=True, slots=True)
class PromptSet:
    """How to write any request's prompt: the groups' system prompts and the lengths."""

    seed: int
    system_prompts: tuple[str, ...]
    """One per group; empty for workloads without shared prefixes."""
    own_tokens: int
    """Tokens each request adds of its own (the question, or the whole random prompt)."""
    system_prompt_tokens: int = 0
    system_ids: tuple[tuple[int, ...], ...] = ()
    """Token ids of each system prompt."""
    answer_tokens: int = 0
    """Tokens of each answer in a conversation's history (multi-turn workloads)."""

    def text(self, request: BenchRequest) -> str:
        return self.text_and_ids(request)[0]

    def text_and_ids(self, request: BenchRequest) -> tuple[str, list[int]]:
        """The prompt and the ids the synthetic tokenizer gives it (one per word)."""
        if request.conversation is not None:
            return self._turn(request.conversation, request.turn)
        own_seed = (
            f"{self.seed}:request:{request.index}"
            if request.prompt_slot is None
            else f"{self.seed}:prompt:{request.prompt_slot}"
        )
        own_tokens = request.prompt_len or self.own_tokens
        ids = _word_ids(random.Random(own_seed), own_tokens, advance=False)
        own = _words(ids)
        if request.group is None:
            return own, ids
        return self.system_prompts[request.group] + own, [*self.system_ids[request.group], *ids]

    def _turn(self, conversation: int, turn: int) -> tuple[str, list[int]]:
        """System prompt, then each earlier turn's question and answer, then turn `turn`'s
        question; every part drawn from its own seed."""
        ids = list(self.system_ids[0])
        for earlier in range(turn + 1):
            base = f"{self.seed}:conversation:{conversation}:turn:{earlier}"
            ids += _word_ids(random.Random(f"{base}:question"), self.own_tokens, advance=False)
            if earlier < turn:
                ids += _word_ids(random.Random(f"{base}:answer"), self.answer_tokens, advance=False)
        return _words(ids), ids

    def tokens(self, request: BenchRequest) -> int:
        if request.conversation is not None:
            return self.shared_tokens(request) + self.own_tokens
        shared = self.system_prompt_tokens if request.group is not None else 0
        return shared + (request.prompt_len or self.own_tokens)

    def shared_tokens(self, request: BenchRequest) -> int:
        """Leading tokens the request's prompt shares with others: its group's system
        prompt, or a turn's system prompt and whole history."""
        if request.conversation is not None:
            turn_tokens = self.own_tokens + self.answer_tokens
            return self.system_prompt_tokens + request.turn * turn_tokens
        return self.system_prompt_tokens if request.group is not None else 0


def build_prompts(workload: Workload) -> PromptSet:
    data = workload.data
    rng = random.Random(f"{data.seed}:system-prompts")
    if isinstance(data, SharedPrefixData):
        ids = tuple(tuple(_word_ids(rng, data.system_prompt_len)) for _ in range(data.num_groups))
        systems = tuple(_words(list(group)) for group in ids)
        return PromptSet(data.seed, systems, data.question_len, data.system_prompt_len, ids)
    if isinstance(data, MultiTurnData):
        system = tuple(_word_ids(rng, data.system_prompt_len))
        return PromptSet(
            data.seed, (_words(system),), data.user_len, data.system_prompt_len, (system,),
            answer_tokens=data.output_len,
        )  # fmt: skip
    if isinstance(data, ShiftingMixData):
        return PromptSet(data.seed, (), data.phases[0].input_len)
    assert isinstance(data, RandomData)
    return PromptSet(data.seed, (), data.input_len)


def _arrivals(rng: random.Random, stage: Stage, start: float, kind: str) -> list[float]:
    """Poisson arrivals, or `constant` ones evenly spaced at the stage's rate (inference-perf's
    two load types)."""
    if kind == "constant":
        count = math.ceil(stage.rate * stage.duration)
        return [start + index / stage.rate for index in range(count)]
    times: list[float] = []
    clock = start
    while True:
        clock += rng.expovariate(stage.rate)
        if clock >= start + stage.duration:
            return times
        times.append(clock)


def build_requests(
    workload: Workload,
    prompts: PromptSet,
    stages: list[tuple[int, Stage]],
    *,
    prompt_pool: bool = False,
) -> list[BenchRequest]:
    """Poisson arrivals per stage, one after the other; each request drawn a group, or with
    `prompt_pool` the next prompt of the pool's shuffled cycle (the same arrival times). A
    multi-turn workload's arrivals start conversations (`_conversations`); a shifting mix's
    requests take their phase's lengths (`_shifting_mix`)."""
    data = workload.data
    if isinstance(data, MultiTurnData | ShiftingMixData):
        if prompt_pool:
            raise ValueError(
                f"{workload.name}: a {data.type.replace('_', ' ')} workload has no fixed "
                "prompt pool; use the tandem load harness"
            )
        if isinstance(data, MultiTurnData):
            return _conversations(workload, data, stages)
        return _shifting_mix(workload, data, stages)
    rng = random.Random(f"{workload.data.seed}:arrivals")
    groups = len(prompts.system_prompts)
    draw_group = _group_draw(workload, rng)
    pool = _prompt_pool(workload) if prompt_pool else None
    requests: list[BenchRequest] = []
    start = 0.0
    for stage_index, stage in stages:
        for arrival in _arrivals(rng, stage, start, workload.load.type):
            # Drawn in either mode, so that arrival times do not depend on the mode.
            group = draw_group() if groups else None
            slot = None
            if pool is not None:
                slot = pool[len(requests) % len(pool)]
                group = _slot_group(workload, slot)
            requests.append(
                BenchRequest(
                    request_id=f"{workload.name}-{len(requests):06d}",
                    stage=stage_index,
                    arrival_s=arrival,
                    index=len(requests),
                    max_tokens=data.output_len,
                    group=group,
                    prompt_slot=slot,
                )
            )
        start += stage.duration
    return requests


def _conversations(
    workload: Workload, data: MultiTurnData, stages: list[tuple[int, Stage]]
) -> list[BenchRequest]:
    """Each arrival starts a conversation whose turns follow one another; a turn's
    `arrival_s` is its earliest possible send (the arrival plus the think times), listed
    right after the turn before, so first turns stay in arrival order."""
    rng = random.Random(f"{data.seed}:arrivals")
    requests: list[BenchRequest] = []
    start = 0.0
    conversation = 0
    for stage_index, stage in stages:
        for arrival in _arrivals(rng, stage, start, workload.load.type):
            thinks = random.Random(f"{data.seed}:conversation:{conversation}:think")
            at = arrival
            for turn in range(data.turns):
                think = 0.0
                if turn and data.think_time_s:
                    think = thinks.expovariate(1 / data.think_time_s)
                at += think
                requests.append(
                    BenchRequest(
                        request_id=f"{workload.name}-{len(requests):06d}",
                        stage=stage_index,
                        arrival_s=at,
                        index=len(requests),
                        max_tokens=data.output_len,
                        conversation=conversation,
                        turn=turn,
                        follows=len(requests) - 1 if turn else None,
                        think_s=think,
                    )
                )
            conversation += 1
        start += stage.duration
    return requests


def _shifting_mix(
    workload: Workload, data: ShiftingMixData, stages: list[tuple[int, Stage]]
) -> list[BenchRequest]:
    """Poisson arrivals per stage, each request with its phase's lengths; a stage shortened
    from its declared duration has its phases shortened in proportion."""
    rng = random.Random(f"{data.seed}:arrivals")
    declared = workload.load.stages
    requests: list[BenchRequest] = []
    start = 0.0
    for stage_index, stage in stages:
        full = declared[stage_index].duration if stage_index >= 0 else stage.duration
        phase_s = data.phase_s * stage.duration / full
        for arrival in _arrivals(rng, stage, start, workload.load.type):
            phase = data.phases[int((arrival - start) / phase_s) % len(data.phases)]
            requests.append(
                BenchRequest(
                    request_id=f"{workload.name}-{len(requests):06d}",
                    stage=stage_index,
                    arrival_s=arrival,
                    index=len(requests),
                    max_tokens=phase.output_len,
                    prompt_len=phase.input_len,
                )
            )
        start += stage.duration
    return requests


def next_turns(requests: Sequence[BenchRequest]) -> dict[int, BenchRequest]:
    """Each request's index → the request that follows it (multi-turn workloads)."""
    return {r.follows: r for r in requests if r.follows is not None}


def _group_draw(workload: Workload, rng: random.Random) -> Callable[[], int]:
    """Draws a request's group: uniformly, or Zipf-weighted (group k+1 weighs 1/(k+1)^s)."""
    data = workload.data
    if not isinstance(data, SharedPrefixData):
        return lambda: 0
    if data.zipf_s is None:
        return lambda: rng.randrange(data.num_groups)
    cumulative = list(
        itertools.accumulate(1.0 / (k + 1) ** data.zipf_s for k in range(data.num_groups))
    )
    total = cumulative[-1]
    return lambda: min(bisect.bisect(cumulative, rng.random() * total), data.num_groups - 1)


def _prompt_pool(workload: Workload) -> list[int]:
    """The pool's prompt slots in the order requests cycle through them: shuffled once, as
    inference-perf shuffles its pre-generated prompts (kubernetes-sigs/inference-perf:
    inference_perf/datagen/shared_prefix_datagen.py, `load_lazy_data` takes index % count)."""
    data = workload.data
    assert not isinstance(data, MultiTurnData | ShiftingMixData)  # build_requests refuses them
    size = (
        data.num_groups * data.prompts_per_group
        if isinstance(data, SharedPrefixData)
        else data.num_prompts
    )
    slots = list(range(size))
    random.Random(f"{data.seed}:prompt-pool").shuffle(slots)
    return slots


def _slot_group(workload: Workload, slot: int) -> int | None:
    data = workload.data
    return slot // data.prompts_per_group if isinstance(data, SharedPrefixData) else None


def stage_starts(stages: Sequence[tuple[int, Stage]]) -> dict[int, float]:
    """Each stage's start in model seconds, as `build_requests` lays the stages out."""
    starts: dict[int, float] = {}
    clock = 0.0
    for index, stage in stages:
        starts[index] = clock
        clock += stage.duration
    return starts


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
