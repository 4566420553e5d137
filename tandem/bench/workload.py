"""Benchmark workload files (`tandem/bench/workloads/*.yaml`), accepted exactly as they are written.

    name, model, engine_profile, gpus
    clusters: {name: {both: N} | {prefill: P, decode: D}}
    data: {type: shared_prefix, num_groups, prompts_per_group, system_prompt_len,
           question_len, output_len, seed, zipf_s?}
        | {type: random, num_prompts, input_len, output_len, seed}
        | {type: multi_turn, system_prompt_len, user_len, output_len, turns, think_time_s, seed}
        | {type: shifting_mix, phase_s, phases: [{input_len, output_len}, ...], seed}
    engine_profiles?: {prefill|decode|both: profile}   (per-pool override; tandem plan only)
    load: {type: poisson | constant, warmup?: {rate, duration}, stages: [{rate, duration}, ...]}
    slo: {ttft_ms, itl_ms, itl_p99_ms?}
    admission?: {max_wait_ms}   (the orchestrator's admission wait bound for every run)
    reference?: {policy: {requests_per_s, output_tokens_per_s, ttft_mean_s, itl_mean_ms,
                          e2e_mean_s}}

Lengths are tokens, rates requests per second, durations seconds of model time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tandem.costmodel.profiles import get_profile
from tandem.errors import WorkloadError, field_problems
from tandem.orchestrator.config import RebalanceConfig

WORKLOAD_DIR = Path(__file__).parent / "workloads"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterShape(_Strict):
    both: int = Field(0, ge=0)
    prefill: int = Field(0, ge=0)
    decode: int = Field(0, ge=0)
    rebalance: RebalanceConfig | None = None
    """Pods move between the prefill and decode pools within these bounds (an elastic
    cluster); `prefill` and `decode` are the split it starts from."""

    @model_validator(mode="after")
    def _one_layout(self) -> ClusterShape:
        if self.both and (self.prefill or self.decode):
            raise ValueError("a cluster is either aggregated (both) or prefill + decode")
        if not self.both and not self.decode:
            raise ValueError("a cluster needs pods: both: N, or decode: N (with prefill: M)")
        bounds = self.rebalance
        if bounds is not None:
            if self.both:
                raise ValueError("rebalance moves pods between prefill and decode pools")
            for role, count, within in (
                ("prefill", self.prefill, bounds.prefill),
                ("decode", self.decode, bounds.decode),
            ):
                if not within.min <= count <= within.max:
                    raise ValueError(f"{role}: {count} pods, outside rebalance.{role} "
                                     f"[{within.min}, {within.max}]")  # fmt: skip
        return self

    @property
    def pods(self) -> int:
        return self.both + self.prefill + self.decode


class SharedPrefixData(_Strict):
    type: Literal["shared_prefix"]
    num_groups: int = Field(ge=1)
    prompts_per_group: int = Field(ge=1)
    system_prompt_len: int = Field(ge=0)
    question_len: int = Field(ge=1)
    output_len: int = Field(ge=1)
    seed: int = 0
    zipf_s: float | None = Field(None, gt=0)
    """Group popularity: unset, every group equally likely; set, group k (from 1) drawn
    with weight 1 / k^s (Zipf), so a few system prompts carry most of the traffic."""


class RandomData(_Strict):
    type: Literal["random"]
    num_prompts: int = Field(ge=1)
    input_len: int = Field(ge=1)
    output_len: int = Field(ge=1)
    seed: int = 0


class MultiTurnData(_Strict):
    """Chat conversations: a load stage's rate is conversations started per second; each
    runs `turns` requests, one after the other, the next sent a think time after the answer
    to the one before has ended. A turn's prompt is the system prompt (shared by every
    conversation), then each earlier turn's question and answer, then its own question, so
    prompts grow by `user_len + output_len` a turn."""

    type: Literal["multi_turn"]
    system_prompt_len: int = Field(ge=0)
    user_len: int = Field(ge=1)
    output_len: int = Field(ge=1)
    turns: int = Field(ge=1)
    think_time_s: float = Field(ge=0)
    """Mean pause between an answer and the next question (model seconds, exponential)."""
    seed: int = 0


class MixPhase(_Strict):
    input_len: int = Field(ge=1)
    output_len: int = Field(ge=1)


class ShiftingMixData(_Strict):
    """Prompts of their own whose lengths follow phases: the first `phase_s` model seconds of
    each load stage send the first phase's lengths, the next `phase_s` the second's, and so
    on, round again. Where a stage is shortened (`--quick`), its phases shrink with it, so
    it still walks every phase."""

    type: Literal["shifting_mix"]
    phase_s: float = Field(gt=0)
    phases: list[MixPhase] = Field(min_length=2)
    seed: int = 0


class Stage(_Strict):
    rate: float = Field(gt=0)
    duration: float = Field(gt=0)


class Load(_Strict):
    type: Literal["poisson", "constant"]
    warmup: Stage | None = None
    stages: list[Stage] = Field(min_length=1)


class Slo(_Strict):
    ttft_ms: float = Field(gt=0)
    itl_ms: float = Field(gt=0)
    """Bound on each request's mean inter-token gap."""
    itl_p99_ms: float | None = Field(None, gt=0)
    """Bound on each request's P99 inter-token gap: the tail SLO, judged besides the mean
    one (DistServe's per-request TPOT targets, llm-d's P95 ITL), which shows the stalls a
    long prefill causes in the decode batch it joins."""

    @property
    def itl_p99_s(self) -> float | None:
        return None if self.itl_p99_ms is None else self.itl_p99_ms / 1000


class Admission(_Strict):
    max_wait_ms: float = Field(gt=0)
    """The orchestrator's admission wait bound for every run (model time): keep it under
    the TTFT target, which the wait is part of."""


class ReferenceFigures(_Strict):
    requests_per_s: float | None = None
    output_tokens_per_s: float | None = None
    ttft_mean_s: float | None = None
    itl_mean_ms: float | None = None
    e2e_mean_s: float | None = None


class Workload(_Strict):
    name: str
    model: str
    engine_profile: str
    engine_profiles: dict[str, str] = Field(default_factory=dict)
    """A pool's own engine profile where it differs (prefill pods with less tensor
    parallelism than decode pods, as llm-d's P/D guide deploys them)."""
    gpus: int = Field(ge=1)
    clusters: dict[str, ClusterShape] = Field(min_length=1)
    data: Annotated[
        SharedPrefixData | RandomData | MultiTurnData | ShiftingMixData,
        Field(discriminator="type"),
    ]
    load: Load
    slo: Slo
    admission: Admission | None = None
    reference: dict[str, ReferenceFigures] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _clusters_fill_the_gpus(self) -> Workload:
        for name, shape in self.clusters.items():
            if self.gpus_of(shape) != self.gpus:
                raise ValueError(
                    f"cluster {name} occupies {self.gpus_of(shape)} GPUs, not the workload's "
                    f"{self.gpus}"
                )
        return self

    @field_validator("engine_profiles")
    @classmethod
    def _pools(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - {"both", "prefill", "decode"})
        if unknown:
            raise ValueError(f"pools are both, prefill and decode, not {', '.join(unknown)}")
        return value

    def profile_for(self, role: str) -> str:
        """The engine profile of the pods in pool `role` (both, prefill or decode)."""
        return self.engine_profiles.get(role, self.engine_profile)

    def role_profiles(self) -> dict[str, str]:
        return {role: self.profile_for(role) for role in ("both", "prefill", "decode")}

    def gpus_of(self, shape: ClusterShape) -> int:
        """GPUs a cluster of this shape occupies: its pods times their profiles' TP."""
        counts = {"both": shape.both, "prefill": shape.prefill, "decode": shape.decode}
        return sum(
            count * get_profile(self.profile_for(role)).tensor_parallel_size
            for role, count in counts.items()
        )


def resolve_workload_path(name_or_path: str) -> Path:
    """A path, or the name of a shipped workload (with or without .yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = WORKLOAD_DIR / (
        name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml"
    )
    if shipped.exists():
        return shipped
    names = ", ".join(sorted(p.stem for p in WORKLOAD_DIR.glob("*.yaml")))
    raise WorkloadError(f"no workload file {name_or_path!r}; shipped workloads: {names}")


def load_workload(name_or_path: str) -> Workload:
    path = resolve_workload_path(name_or_path)
    try:
        document = yaml.safe_load(path.read_text())
        return Workload.model_validate(document)
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise WorkloadError(f"{path}: {field_problems(exc.errors())}") from None
