"""Which way the P:D split should move: a pod from the prefill pool to the decode pool, the
other way, or neither.

A pod's KV role is fixed while it runs (vLLM's NixlConnector takes `kv_producer` or
`kv_consumer` at start), so the split moves a pod at a time: one pod of the pool that can
spare it is drained and restarted in the other role, and the pools' total stays the same.
This module only decides; who drains and restarts a pod is the deployment's business
(`tandem up`'s mover does it, and the virtual cluster of `tandem plan` in model time).

Each pool's load is what the scaling signals say it needs (`PoolNeeds.load`, in pods: its
prefill need plus its decode need, each against what a pod sustains within the SLO), so a
pool's load per pod is its busy share, 1.0 at the SLO's edge. The split serves the load as
well as its busier pool does, so a move is worth making when it lowers the larger of the
two pools' load per pod — the bottleneck — by at least `margin`, while that bottleneck is
at least `min_load` (at light load any split serves), and has been so for `sustain_s`: a
move costs a pod's drain and restart, which a shift shorter than that does not repay. A
move that would make the other pool a worse bottleneck is never made, so at a steady load
the split settles rather than swinging back and forth. No move starts within `interval_s`
of the last one, and none takes a pool outside its bounds. DistServe sizes each phase's
instances to its share of the load offline (Zhong et al., OSDI 2024, §4); this does it
online, a pod at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tandem.orchestrator.config import RebalanceConfig
from tandem.orchestrator.scaling import PoolNeeds

POOLS = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class Move:
    """One pod to move from `source` to `target`, and the bottleneck it relieves."""

    source: str
    target: str
    reason: str
    """`<target>_pool_busier`: the pool that gains the pod is the bottleneck."""
    load_per_pod: float
    """The bottleneck's load per pod now."""
    load_per_pod_after: float
    """The bottleneck's load per pod once the pod has moved (at today's load)."""


@dataclass(slots=True)
class Rebalancer:
    config: RebalanceConfig
    _last_move_s: float | None = None
    _wanted: tuple[str, str] | None = None
    """The move the load has asked for at every look since `_wanted_since`."""
    _wanted_since: float = 0.0
    target: dict[str, int] | None = None
    """The split the last move leads to: each pool's pods once it has landed."""
    _target_since: float = 0.0

    def start(self, move: Move, split: Mapping[str, int], now: float) -> dict[str, int]:
        """Record `move` as started from `split`; returns the target split."""
        target = dict(split)
        target[move.source] -= 1
        target[move.target] += 1
        self.target, self._target_since = target, now
        return target

    def under_way(self, split: Mapping[str, int], now: float) -> bool:
        """Whether the last move is still landing: its pod yet to leave its pool (the
        split as it was) or restarting in the other (one pod fewer than the target), and
        younger than `move_timeout_s`. A move that has landed, or that the pods can no
        longer make (the total changed otherwise: a pod lost, or added from outside), or
        took too long, is over."""
        target = self.target
        if target is None or dict(split) == target:
            return False
        missing = sum(target.values()) - sum(split.values())
        timely = now - self._target_since < self.config.move_timeout_s
        return missing in (0, 1) and timely

    def propose(self, needs: Mapping[str, PoolNeeds], now: float) -> Move | None:
        """The move to start now, or None. A move starts once the load has asked for it at
        every look for `sustain_s`, and `interval_s` after the last; a returned move counts
        as started. The caller looks every few seconds while no move is under way, with the
        pools' serving pods (a draining pod in neither)."""
        c = self.config
        move = self._relieving(needs)
        wanted = None if move is None else (move.source, move.target)
        if wanted != self._wanted:
            self._wanted, self._wanted_since = wanted, now
        if move is None or now - self._wanted_since < c.sustain_s:
            return None
        if self._last_move_s is not None and now - self._last_move_s < c.interval_s:
            return None
        self._last_move_s, self._wanted = now, None
        return move

    def _relieving(self, needs: Mapping[str, PoolNeeds]) -> Move | None:
        """The move that relieves the bottleneck by the margin within bounds, if one does."""
        c = self.config
        if any(pool not in needs for pool in POOLS):
            return None
        pods = {pool: needs[pool].replicas for pool in POOLS}
        load = {pool: needs[pool].load for pool in POOLS}
        before = bottleneck(load, pods)
        if before < c.min_load:
            return None
        bounds = {"prefill": c.prefill, "decode": c.decode}
        for source, target in (("prefill", "decode"), ("decode", "prefill")):
            if pods[source] - 1 < bounds[source].min or pods[target] + 1 > bounds[target].max:
                continue
            after = bottleneck(load, {source: pods[source] - 1, target: pods[target] + 1})
            if after <= before * (1 - c.margin):
                return Move(source, target, f"{target}_pool_busier", before, after)
        return None


def bottleneck(load: Mapping[str, float], pods: Mapping[str, int]) -> float:
    """The larger of the pools' load per pod."""
    return max(load[pool] / pods[pool] for pool in POOLS)
