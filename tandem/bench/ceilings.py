"""What the hit rate of a workload's requests could be, to read a measured one against.

* `hit_rate_ceilings`: a cache of unbounded size and perfect routing. Each group's system
  prompt is a hit from the group's second request in the run on; a conversation's turn
  finds its previous turn's prompt (its first turn, the shared system prompt once another
  conversation has begun).
* `hit_rate_kv_bounds`: the same prompts, in arrival order, through one least-recently-used
  cache of full blocks the size of the whole cluster's KV, every prompt's blocks and its
  answer's entered as they arrive: perfect routing with the pool's real capacity (no
  fragmentation across pods, no blocks pinned by running requests). On a workload whose
  prefixes do not fit, this is what a router can aim for; the ceiling is not reachable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from tandem.bench.generate import BenchRequest, PromptSet
from tandem.bench.workload import ClusterShape, Workload
from tandem.costmodel.profiles import get_profile

BLOCK_SIZE = 16
"""vLLM's default `--block-size` (GPU), the simulated pods' too."""


def hit_rate_ceilings(prompts: PromptSet, requests: Sequence[BenchRequest]) -> dict[int, float]:
    """Per stage, the most prompt tokens any cache could serve (a cache of unbounded size,
    perfect routing): each group's system prompt, from the group's second request in the
    run on; a conversation's turn, the previous turn's prompt (the first turn, the system
    prompt from the run's second conversation on). Stages of workloads without shared
    prefixes have none."""
    seen: set[int] = set()
    hits: dict[int, int] = {}
    totals: dict[int, int] = {}
    by_index = {r.index: r for r in requests}
    for request in sorted(requests, key=lambda r: r.arrival_s):
        totals[request.stage] = totals.get(request.stage, 0) + prompts.tokens(request)
        if request.conversation is not None:
            if request.follows is not None:
                cached = prompts.tokens(by_index[request.follows])
            else:
                cached = prompts.system_prompt_tokens if seen else 0
                seen.add(request.conversation)
            hits[request.stage] = hits.get(request.stage, 0) + cached
        elif request.group is not None:
            if request.group in seen:
                hits[request.stage] = hits.get(request.stage, 0) + prompts.system_prompt_tokens
            seen.add(request.group)
    if not seen:
        return {}
    return {stage: hits.get(stage, 0) / total for stage, total in totals.items() if total}


def kv_capacity(workload: Workload, shape: ClusterShape) -> int:
    """KV tokens a cluster of this shape holds: its pods times their profiles' capacity."""
    counts = {"both": shape.both, "prefill": shape.prefill, "decode": shape.decode}
    return sum(
        count * get_profile(workload.profile_for(role)).kv_capacity_tokens
        for role, count in counts.items()
    )


def hit_rate_kv_bounds(
    prompts: PromptSet,
    requests: Sequence[BenchRequest],
    kv_capacity_tokens: int,
    block_size: int = BLOCK_SIZE,
) -> dict[int, float]:
    """Per stage, the hit rate of one LRU cache of `kv_capacity_tokens` (the module's
    docstring). Stages of workloads without shared prefixes have none."""
    if not prompts.system_prompts:
        return {}
    capacity = kv_capacity_tokens // block_size
    system_blocks = prompts.system_prompt_tokens // block_size
    cache: OrderedDict[Hashable, None] = OrderedDict()
    hits: dict[int, int] = {}
    totals: dict[int, int] = {}
    for request in sorted(requests, key=lambda r: r.arrival_s):
        tokens = prompts.tokens(request)
        shared = prompts.shared_tokens(request)
        blocks = [_block_key(request, i, system_blocks) for i in range(tokens // block_size)]
        matched = 0
        for key in blocks:
            if key not in cache:
                break
            matched += 1
        totals[request.stage] = totals.get(request.stage, 0) + tokens
        hits[request.stage] = hits.get(request.stage, 0) + min(matched * block_size, shared)
        for key in blocks:
            cache[key] = None
            cache.move_to_end(key)
        for i in range(request.max_tokens // block_size):  # the answer's blocks
            cache[("answer", request.index, i)] = None
        while len(cache) > capacity:
            cache.popitem(last=False)
    return {stage: hits[stage] / total for stage, total in totals.items() if total}


def _block_key(request: BenchRequest, position: int, system_blocks: int) -> Hashable:
    """What names a prompt block's content: a system prompt's by position (and group), a
    conversation's history by conversation and position (its prompts only grow), others by
    request and position."""
    if request.conversation is not None:
        if position < system_blocks:
            return ("system", position)
        return ("conversation", request.conversation, position)
    if position < system_blocks and request.group is not None:
        return ("group", request.group, position)
    return ("request", request.index, position)
