"""A whole tandem deployment in virtual time: router, sidecars, pods and the KV transfers.

What runs is the live code: the orchestrator's `Router` (endpoint store, the configured
scheduler with its plugins, decider and prefix index, in-flight accounting) and one engine
core per pod, built from the same pod definitions as `tandem up`. What is modelled is what
the live path adds around them:

* **scrapes**: the router sees each pod's queue and KV usage as of its last scrape, every
  `scrape_interval_s` (the orchestrator's own default), not the pod's current state;
* **hops**: `gateway_s` from client to the serving pod and back (the gateway's measured
  cost), `sidecar_s` for each sidecar leg of a disaggregated request (the prefill request,
  the local decode request);
* **KV transfer**: the profile's time for the uncached tokens (bytes per token x tokens /
  bandwidth + latency), as the live simulated pods wait; NIXL lease heartbeats every
  lease/6 as the live consumer sends them;
* **KV events** (with `precise-prefix-cache-producer`): each pod's step's events reach the
  precise index `kv_event_lag_s` later, in order;
* **scaling signals** (given a `ScalingConfig`): every `scaling_sample_s` the router's
  desired replicas per pool are sampled, as a HorizontalPodAutoscaler would read them, and
  averaged per stage;
* **moves between the pools** (given a `RebalanceConfig`): every `rebalance_check_s` the
  router's rebalancer is asked which way the split should move; a moving pod leaves the
  router's endpoints at once, stops once nothing it serves is left (its requests ended, its
  prefilled KV read), and comes back in the other role, under a new name, `restart_s` later.

Each request produces the same `RequestRecord` the live load generator writes, so `tandem
plan` and `tandem bench` summarize identically.
"""

from __future__ import annotations

import itertools
import json
import operator
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tandem.bench.generate import BenchRequest, PromptSet, next_turns
from tandem.bench.records import RequestRecord
from tandem.bench.workload import ClusterShape
from tandem.cluster.topology import POOLS_BY_ROLE, PoolPod, pool_pod, pool_pods
from tandem.discovery.endpoints import ROLE_LABEL, Endpoint
from tandem.errors import KVReadError, OpenAIError
from tandem.kvcache.events import EventBatch, KVEvent
from tandem.orchestrator.config import OrchestratorConfig, RebalanceConfig, ScalingConfig
from tandem.orchestrator.endpoints import EndpointStore
from tandem.orchestrator.inference_request import parse_inference_request
from tandem.orchestrator.metrics import GatewayMetrics
from tandem.orchestrator.rebalance import Move
from tandem.orchestrator.router import Loads, Router
from tandem.orchestrator.scheduling.config import EndpointPickerConfig, build_scheduler
from tandem.orchestrator.scheduling.types import EngineMetrics, SchedulingResult
from tandem.planner.events import EventLoop
from tandem.planner.pods import VirtualPod
from tandem.sidecar.config import PrefillFailurePolicy, SidecarConfig
from tandem.sidecar.flow import Next, after_prefill, reply_failure
from tandem.sidecar.prefill import REMOTE_DECODE_PARAMS
from tandem.simulator.config import simulated_pod
from tandem.simulator.kv_connector import RemoteLoad
from tandem.simulator.request import EngineRequest, RequestOutput

STAGE_LEAD_S = 1.0
"""An isolated stage's first request is scheduled this long after the stage starts
(kubernetes-sigs/inference-perf: loadgen/load_generator.py, `run_stage`)."""


@dataclass(frozen=True, slots=True)
class PathModel:
    """What the live request path adds around the engines, in model seconds."""

    gateway_s: float = 0.003
    """Gateway hop, each way (`tandem microbench gateway`: +2.6 to 3.3 ms p50)."""
    sidecar_s: float = 0.003
    """One sidecar leg (`tandem microbench sidecar`: +2.6 ms p50)."""
    scrape_interval_s: float = 0.5
    """How often the router's view of each pod is refreshed (the orchestrator's default)."""
    staleness_s: float = 2.0
    expiry_tick_s: float = 1.0
    """How often idle pods drop expired KV leases (the live pod's expiry loop)."""
    kv_event_lag_s: float = 0.002
    """From a pod's step to its KV events in the precise index (ZMQ and the orchestrator's
    loop; `tandem_kv_event_lag_seconds` measures the live figure)."""
    scaling_sample_s: float = 1.0
    """How often the desired replicas are read (a Prometheus scrape is 15-30 s; finer here,
    for the stage means)."""
    rebalance_check_s: float = 1.0
    """How often the rebalancer is asked for a move, and a draining pod checked."""
    restart_s: float = 60.0
    """From a drained pod's stop to its start in the other role, answering: a new pod of an
    8B model on one GPU loads its weights from local disk, compiles from its cache and
    captures CUDA graphs in about a minute. Set it to what your pods take."""

    def scaled(self, time_scale: float) -> PathModel:
        """The path of a live run at `time_scale` (wall costs shrink in model time)."""
        return PathModel(
            gateway_s=self.gateway_s / time_scale,
            sidecar_s=self.sidecar_s / time_scale,
            scrape_interval_s=self.scrape_interval_s / time_scale,
            staleness_s=self.staleness_s / time_scale,
            expiry_tick_s=self.expiry_tick_s,
            kv_event_lag_s=self.kv_event_lag_s / time_scale,
            scaling_sample_s=self.scaling_sample_s,
            rebalance_check_s=self.rebalance_check_s,
            restart_s=self.restart_s,
        )


SIDECAR_POLICY: PrefillFailurePolicy = SidecarConfig().prefill_failure_policy


@dataclass(eq=False)
class _Flight:
    """One request on its way through the virtual cluster."""

    bench: BenchRequest
    record: RequestRecord
    loads: Loads | None = None
    last_token_s: float | None = None
    decode_pod: VirtualPod | None = None


@dataclass(slots=True)
class PodMove:
    """One pod's move from one pool to the other, as it went."""

    move: Move
    pod: str
    """The pod that left its pool."""
    started_s: float
    stopped_s: float | None = None
    """When it had drained and stopped."""
    new_pod: str | None = None
    ended_s: float | None = None
    """When it answered in its new role."""


@dataclass(eq=False)
class VirtualCluster:
    loop: EventLoop
    router: Router
    pods: dict[str, VirtualPod]
    path: PathModel
    prompts: PromptSet
    model: str
    on_done: Callable[[RequestRecord], None] | None = None
    sidecar_policy: PrefillFailurePolicy = SIDECAR_POLICY
    """What the sidecars do when a prefill fails (their default: prefill locally)."""
    records: list[RequestRecord] = field(default_factory=list)
    _in_flight: dict[str, _Flight] = field(default_factory=dict)
    _pending: int = 0
    _epoch: int = 0
    _last_end_s: float = 0.0
    """When the client saw the last request end."""
    _next_turns: dict[int, BenchRequest] = field(default_factory=dict)
    """Conversations' later turns by the index of the request they follow."""
    _pooled_prompts: dict[tuple[int, int], tuple[bytes, list[int]]] = field(default_factory=dict)
    """Body and ids of the prompts a pooled harness repeats, by (slot, max tokens)."""
    _kv_seq: dict[str, int] = field(default_factory=dict)
    """Each pod's last KV event batch number."""
    _stage: int | None = None
    """The stage of the latest arrival: the one the scaling samples belong to."""
    _desired: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    """Desired replicas sampled during each stage, by pool."""
    profile: str | Mapping[str, str] = "llama-3.1-8b-h100-tp1"
    """Every pod's engine profile, or each pool's: what a pod started in a new role runs."""
    moves: list[PodMove] = field(default_factory=list)
    """Every move between the pools, the one under way last."""
    retired: list[VirtualPod] = field(default_factory=list)
    """Pods stopped to move to the other pool."""
    _fast_forward: bool = True

    @classmethod
    def build(
        cls,
        shape: ClusterShape,
        profile: str | Mapping[str, str],
        scheduler: EndpointPickerConfig,
        prompts: PromptSet,
        model: str,
        *,
        path: PathModel | None = None,
        seed: int = 0,
        on_done: Callable[[RequestRecord], None] | None = None,
        fast_forward: bool = True,
        scaling: ScalingConfig | None = None,
        rebalance: RebalanceConfig | None = None,
    ) -> VirtualCluster:
        path = path or PathModel()
        loop = EventLoop()
        config = OrchestratorConfig.model_validate(
            {"scrape": {"interval_s": path.scrape_interval_s, "staleness_s": path.staleness_s},
             "scaling": scaling, "rebalance": rebalance}
        )  # fmt: skip
        # As `tandem bench` runs the orchestrator: seeded tie-breaks, no model configured.
        router_scheduler = build_scheduler(scheduler, rng=random.Random(seed), prefix_seed="")
        router = Router(
            config=config,
            scheduler=router_scheduler,
            store=EndpointStore(path.staleness_s),
            metrics=GatewayMetrics(),
            clock=loop.clock,
        )
        cluster = cls(loop, router, {}, path, prompts, model, on_done, profile=profile)
        cluster._fast_forward = fast_forward
        pools = pool_pods(
            aggregated=shape.both, prefill=shape.prefill, decode=shape.decode, profile=profile
        )
        for definition in pools:  # named and defined as `tandem up` does
            cluster._add_pod(definition)
        cluster._publish_endpoints()
        for pod in cluster.pods.values():
            cluster._scrape(pod)
        return cluster

    def _add_pod(self, definition: PoolPod) -> VirtualPod:
        precise = self.router.scheduler.precise
        pod_config = simulated_pod(definition.pod.vllm)
        if precise is None:  # nobody reads them: spare the events
            pod_config = pod_config.model_copy(update={"kv_events_config": None})
        name = definition.name
        pod = VirtualPod.build(name, definition.role, pod_config, self.loop, self._remote_load)
        pod.fast_forward = self._fast_forward
        if precise is not None:
            pod.on_kv_events = self._kv_events
            precise.index.resync(name, [], 0.0)  # followed from its first event
        self.pods[name] = pod
        return pod

    def _publish_endpoints(self) -> None:
        """The router's endpoints: every pod but one leaving its pool."""
        leaving = self._moving.pod if self._moving is not None else None
        self.router.on_endpoints(
            [
                Endpoint(name, name, 8000, {ROLE_LABEL: pod.role})
                for name, pod in self.pods.items()
                if name != leaving
            ]
        )

    @property
    def _moving(self) -> PodMove | None:
        """The move under way, if one is."""
        last = self.moves[-1] if self.moves else None
        return last if last is not None and last.ended_s is None else None

    def _start_periodic(self) -> None:
        """(Re)start each pod's scrapes, lease expiry and heartbeats from now; loops of an
        earlier start see a stale epoch and stop."""
        self._epoch += 1
        epoch, now, pods = self._epoch, self.loop.now, list(self.pods.values())
        for index, pod in enumerate(pods):
            # Scrapes spread over the interval, as independent pollers drift apart.
            phase = self.path.scrape_interval_s * index / max(1, len(pods))
            self._start_pod_loops(pod, epoch, phase)
        if self.router.scaling is not None:
            self.loop.at(now + self.path.scaling_sample_s, self._scaling_loop, epoch)
        if self.router.rebalancer is not None:
            self.loop.at(now + self.path.rebalance_check_s, self._rebalance_loop, epoch)

    def _start_pod_loops(self, pod: VirtualPod, epoch: int, phase: float = 0.0) -> None:
        now = self.loop.now
        self.loop.at(now + phase, self._scrape_loop, pod, epoch)
        self.loop.at(now + self.path.expiry_tick_s, self._expiry_loop, pod, epoch)
        if pod.role == "decode":
            interval = pod.engine.held.heartbeat_interval
            self.loop.at(now + interval, self._heartbeat_loop, pod, epoch)

    def _ticking(self, epoch: int, pod: VirtualPod | None = None) -> bool:
        """Whether a periodic loop goes on: its run is current, and its pod still runs."""
        alive = pod is None or self.pods.get(pod.name) is pod
        return self._pending > 0 and epoch == self._epoch and alive

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        requests: Sequence[BenchRequest],
        *,
        drain_limit_s: float = 3600.0,
        stage_starts: Mapping[int, float] | None = None,
    ) -> list[RequestRecord]:
        """Send every request at its arrival time and run until all have ended, or until
        `drain_limit_s` after the last arrival: what is still open then fails with 504 (as a
        client would give up).

        With `stage_starts` (each stage's nominal start, as `build_requests` laid them out),
        stages are isolated as inference-perf runs a ladder: a stage begins only when every
        request of the one before has ended, its first arrival `STAGE_LEAD_S` later, and each
        stage gets its own drain limit."""
        if stage_starts is None:
            self._send(requests, 0.0, drain_limit_s)
        else:
            by_stage: dict[int, list[BenchRequest]] = {}
            for request in requests:
                by_stage.setdefault(request.stage, []).append(request)
            for stage, batch in sorted(by_stage.items(), key=lambda item: stage_starts[item[0]]):
                start = self._last_end_s + STAGE_LEAD_S if self.records else 0.0
                self._send(batch, start - stage_starts[stage], drain_limit_s)
        return self.records

    def _send(
        self, requests: Sequence[BenchRequest], offset_s: float, drain_limit_s: float
    ) -> None:
        """Send `requests` `offset_s` later than their arrival times, run until they have
        all ended, and fail what is still open `drain_limit_s` after the last arrival."""
        self._pending += len(requests)
        self._start_periodic()
        self._next_turns.update(next_turns(requests))
        for request in requests:
            if request.follows is None:  # a later turn is sent when the one before ends
                self.loop.at(request.arrival_s + offset_s, self._arrive, request, offset_s)
        last = max((r.arrival_s for r in requests), default=0.0) + offset_s
        # Stop when the last request ends: periodic work still queued then (a heartbeat due
        # seconds later) must not hold back the next stage's first arrivals.
        self.loop.run(until=last + drain_limit_s, done=lambda: self._pending == 0)
        for pod in self.pods.values():
            pod.observe()  # tokens of the steps under way reach their records
        for flight in list(self._in_flight.values()):
            flight.record.status = 504
            flight.record.error = f"no answer {drain_limit_s:g} s after the last arrival"
            self._finish(flight)

    def desired_replicas(self) -> dict[int, dict[str, float]]:
        """Mean desired replicas per pool over each stage (empty without scaling signals)."""
        return {
            stage: {pool: sum(values) / len(values) for pool, values in pools.items()}
            for stage, pools in self._desired.items()
        }

    def utilization(self) -> dict[str, tuple[str, float]]:
        """Each pod's role and the share of the elapsed virtual time it spent in steps
        (pods moved to the other pool under their old names)."""
        elapsed = self.loop.now or 1.0
        pods = [*self.retired, *self.pods.values()]
        return {pod.name: (pod.role, pod.busy_s / elapsed) for pod in pods}

    # -- periodic work --------------------------------------------------------------------

    def _scrape(self, pod: VirtualPod) -> None:
        engine = pod.engine
        metrics = EngineMetrics(
            waiting=engine.num_waiting,
            running=pod.num_running(),
            kv_usage=pod.kv_usage(),
            scraped_at=self.loop.now,
            block_size=engine.config.block_size,
            num_gpu_blocks=engine.config.num_gpu_blocks,
            computed_prompt_tokens=engine.stats.prompt_tokens_by_source["local_compute"],
            itl_sum_s=engine.stats.inter_token_latency.total,
            itl_count=engine.stats.inter_token_latency.count,
        )
        self.router.store.record_scrape(pod.name, metrics)
        endpoint = self.router.store.state(pod.name)
        if endpoint is not None:
            self.router.on_scrape(endpoint.endpoint, metrics, None)

    def _kv_events(self, pod: VirtualPod, events: list[KVEvent]) -> None:
        """A pod's step stored or evicted blocks: the precise index learns it a little
        later, in order."""
        seq = self._kv_seq[pod.name] = self._kv_seq.get(pod.name, -1) + 1
        batch = EventBatch(self.loop.now, tuple(events))
        self.loop.after(self.path.kv_event_lag_s, self._kv_event_arrived, pod.name, seq, batch)

    def _kv_event_arrived(self, name: str, seq: int, batch: EventBatch) -> None:
        precise = self.router.scheduler.precise
        if precise is not None:
            precise.index.apply(name, seq, batch, self.loop.now)

    def _scrape_loop(self, pod: VirtualPod, epoch: int) -> None:
        self._scrape(pod)
        if self._ticking(epoch, pod):
            self.loop.after(self.path.scrape_interval_s, self._scrape_loop, pod, epoch)

    def _scaling_loop(self, epoch: int) -> None:
        if self._stage is not None:
            samples = self._desired.setdefault(self._stage, {})
            for pool, needs in self.router.pool_needs().items():
                samples.setdefault(pool, []).append(needs.desired)
        if self._ticking(epoch):
            self.loop.after(self.path.scaling_sample_s, self._scaling_loop, epoch)

    def _expiry_loop(self, pod: VirtualPod, epoch: int) -> None:
        if pod.engine.expire_held(self.loop.now):
            pod.wake()
        if self._ticking(epoch, pod):
            self.loop.after(self.path.expiry_tick_s, self._expiry_loop, pod, epoch)

    def _heartbeat_loop(self, consumer: VirtualPod, epoch: int) -> None:
        """Keep the leases of prefilled KV this pod has yet to read (the live consumer's
        heartbeats)."""
        for request in consumer.engine.scheduler.waiting:
            if request.awaits_remote_kv and request.remote is not None:
                producer = self.pods.get(request.remote.remote_engine_id)
                if producer is not None:
                    producer.engine.heartbeat_held(
                        [request.remote.remote_request_id], self.loop.now
                    )
        if self._ticking(epoch, consumer):
            interval = consumer.engine.held.heartbeat_interval
            self.loop.after(interval, self._heartbeat_loop, consumer, epoch)

    # -- moves between the pools ----------------------------------------------------------

    def _rebalance_loop(self, epoch: int) -> None:
        if self._moving is None:
            move = self.router.rebalance()
            if move is not None:
                self._start_move(move)
        if self._ticking(epoch):
            self.loop.after(self.path.rebalance_check_s, self._rebalance_loop, epoch)

    def _start_move(self, move: Move) -> None:
        """Take the source pool's least busy pod out of the router's endpoints; it stops
        once drained."""
        pods = [pod for pod in self.pods.values() if pod.role == move.source]
        leaving = min(pods, key=lambda p: (p.num_running() + p.engine.num_waiting, p.name))
        moving = PodMove(move, leaving.name, self.loop.now)
        self.moves.append(moving)
        self._publish_endpoints()
        # Requests routed to it just before reach it within a hop: check from a tick on.
        self.loop.after(self.path.rebalance_check_s, self._drain_check, moving, leaving)

    def _drain_check(self, moving: PodMove, pod: VirtualPod) -> None:
        if not pod.drained() or self._serves(pod.name):
            self.loop.after(self.path.rebalance_check_s, self._drain_check, moving, pod)
            return
        moving.stopped_s = self.loop.now
        del self.pods[pod.name]
        self.retired.append(pod)
        self.loop.after(self.path.restart_s, self._restarted, moving)

    def _serves(self, name: str) -> bool:
        """Whether a request in flight is bound for the pod: it decodes there, or its
        prefill there has yet to be read."""
        return any(
            loads.decode == name or (loads.prefill == name and not loads.prefill_done)
            for loads in (flight.loads for flight in self._in_flight.values())
            if loads is not None
        )

    def _restarted(self, moving: PodMove) -> None:
        """The stopped pod answers again, in its new pool, under a new name."""
        pool = POOLS_BY_ROLE[moving.move.target]
        taken = {pod.name for pod in (*self.retired, *self.pods.values())}
        index = next(i for i in itertools.count() if f"{pool.pod_name}-{i}" not in taken)
        pod = self._add_pod(pool_pod(pool, index, self.profile))
        moving.new_pod, moving.ended_s = pod.name, self.loop.now
        self._publish_endpoints()
        self._scrape(pod)
        self._start_pod_loops(pod, self._epoch)

    # -- the request path -----------------------------------------------------------------

    def _arrive(self, request: BenchRequest, offset_s: float = 0.0) -> None:
        now = self.loop.now
        self._stage = request.stage
        body, prompt = self._prompt(request)
        record = RequestRecord(
            request_id=request.request_id,
            stage=request.stage,
            scheduled_s=request.arrival_s + offset_s if request.follows is None else now,
            sent_s=now,
            prompt_tokens=self.prompts.tokens(request),
            max_tokens=request.max_tokens,
            group=request.group,
        )
        flight = _Flight(request, record)
        self._in_flight[request.request_id] = flight
        parsed = parse_inference_request(
            "completions", body, {}, request.request_id,
            self.router.config.gateway.chars_per_token,
        )  # fmt: skip
        try:
            result = self.router.schedule(parsed.scheduling)
        except OpenAIError as exc:
            record.status, record.error = exc.status, exc.message
            self._finish(flight)
            return
        flight.loads = self.router.acquire(parsed.scheduling, result)
        self.loop.after(self.path.gateway_s, self._at_decode_endpoint, flight, result, prompt)

    def _prompt(self, request: BenchRequest) -> tuple[bytes, list[int]]:
        """The completions body the client posts and the prompt's ids; one that repeats is
        written once (nothing changes either)."""
        if request.prompt_slot is None:
            return self._write_prompt(request)
        key = (request.prompt_slot, request.max_tokens)
        prompt = self._pooled_prompts.get(key)
        if prompt is None:
            prompt = self._pooled_prompts[key] = self._write_prompt(request)
        return prompt

    def _write_prompt(self, request: BenchRequest) -> tuple[bytes, list[int]]:
        text, ids = self.prompts.text_and_ids(request)
        body = {"model": self.model, "prompt": text, "max_tokens": request.max_tokens}
        return json.dumps(body).encode(), ids

    def _at_decode_endpoint(
        self, flight: _Flight, result: SchedulingResult, prompt: list[int]
    ) -> None:
        decode = self.pods[result.decode.best.name]
        flight.decode_pod = decode
        if not result.prefill_targets:
            self._decode(flight, decode, prompt, None)
            return
        prefill = self.pods[result.prefill_targets[0].name]
        leg = EngineRequest(
            request_id=f"{flight.bench.request_id}-prefill",
            prompt_token_ids=prompt,
            max_tokens=1,
            arrival_time=0.0,
            kv_transfer_params=dict(REMOTE_DECODE_PARAMS),
        )

        def prefilled(output: RequestOutput, _: Sequence[float]) -> None:
            if not output.finished:
                return
            params = output.kv_transfer_params
            failure = reply_failure(500 if output.error is not None else 200, params)
            # As the sidecar decides (one candidate here: the orchestrator's first).
            step = after_prefill(
                prefilled=failure is None,
                client_error=False,
                failure=failure,
                policy=self.sidecar_policy,
            )
            if step.next is Next.FAIL:
                flight.record.status = step.status
                flight.record.error = f"prefill failed ({step.reason})"
                self._finish(flight)
                return
            kv = params if step.next is Next.DECODE_WITH_KV else None
            self.loop.after(self.path.sidecar_s, self._decode, flight, decode, prompt, kv)

        self.loop.after(self.path.sidecar_s, prefill.submit, leg, prefilled)

    def _decode(
        self,
        flight: _Flight,
        pod: VirtualPod,
        prompt: list[int],
        kv_transfer_params: dict[str, object] | None,
    ) -> None:
        request = EngineRequest(
            request_id=flight.bench.request_id,
            prompt_token_ids=prompt,
            max_tokens=flight.bench.max_tokens,
            arrival_time=0.0,
            kv_transfer_params=kv_transfer_params,
        )
        pod.submit(request, lambda output, times: self._token(flight, output, times))

    def _token(self, flight: _Flight, output: RequestOutput, times: Sequence[float]) -> None:
        """An engine output reaches the client one gateway hop after each token's time."""
        record = flight.record
        hop = self.path.gateway_s
        arrivals = [t + hop for t in times]
        at = arrivals[-1]
        if output.new_token_ids:
            if record.ttft_s is None:
                record.ttft_s = arrivals[0] - record.sent_s
                if flight.loads is not None:
                    self.router.prefill_done(flight.loads)
            elif flight.last_token_s is not None:
                record.itl_s.append(arrivals[0] - flight.last_token_s)
            record.itl_s.extend(map(operator.sub, arrivals[1:], arrivals))
            flight.last_token_s = at
            record.output_tokens += len(output.new_token_ids)
        if output.finished:
            record.success = output.error is None
            record.status = 200 if record.success else 500
            record.error = output.error
            record.cached_tokens = output.num_cached_tokens
            record.e2e_s = at - record.sent_s
            self._finish(flight)

    def _finish(self, flight: _Flight) -> None:
        if self._in_flight.pop(flight.bench.request_id, None) is None:
            return  # already ended
        if flight.loads is not None:
            self.router.release(flight.loads)
        record = flight.record
        self.records.append(record)
        ended = record.sent_s + record.e2e_s if record.e2e_s is not None else self.loop.now
        self._last_end_s = max(self._last_end_s, ended)
        self._pending -= 1
        turn = self._next_turns.pop(flight.bench.index, None)
        if turn is not None:  # the conversation goes on after a think time
            self.loop.at(max(ended, self.loop.now) + turn.think_s, self._arrive, turn)
        if self.on_done is not None:
            self.on_done(flight.record)

    # -- KV transfer ----------------------------------------------------------------------

    def _remote_load(self, consumer: VirtualPod, load: RemoteLoad) -> None:
        """The decode engine started reading prefilled KV: time it like the live pod."""
        source = load.source
        producer = self.pods.get(source.remote_engine_id)
        now = self.loop.now
        try:
            if producer is None:
                raise KVReadError(f"unknown engine id {source.remote_engine_id}")
            blocks = source.remote_block_ids[0]  # what the live side channel sends
            producer.engine.read_held(source.remote_request_id, blocks, now)
        except KVReadError as exc:
            consumer.interrupt()
            output = consumer.engine.finish_remote_load(load.request_id, now, error=str(exc))
            self._transfer_ended(consumer, producer, source.remote_request_id, output)
            return
        # The slower side's links bound the read (a TP1 producer has one rail to a TP4
        # consumer's four).
        seconds = max(
            consumer.profile.kv_transfer_seconds(load.num_tokens),
            producer.profile.kv_transfer_seconds(load.num_tokens),
        )
        num_bytes = load.num_tokens * consumer.profile.kv_bytes_per_token

        def arrived() -> None:
            consumer.interrupt()
            output = consumer.engine.finish_remote_load(
                load.request_id, self.loop.now, transfer_seconds=seconds, transfer_bytes=num_bytes
            )
            self._transfer_ended(consumer, producer, source.remote_request_id, output)

        self.loop.after(seconds, arrived)

    def _transfer_ended(
        self,
        consumer: VirtualPod,
        producer: VirtualPod | None,
        remote_request_id: str,
        output: RequestOutput | None,
    ) -> None:
        if producer is not None and producer.engine.release_held(remote_request_id):
            producer.wake()
        if output is not None:
            consumer.deliver(output)
        consumer.wake()
