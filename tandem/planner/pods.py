"""A simulated vLLM pod in virtual time: the live pod's engine core, stepped by events.

The live pod's `EngineRunner` steps the engine, sleeps (scaled wall time) until the step's
end, delivers the outputs and steps again; here the sleep is an event at the step's end. KV
reads the engine starts are handed to the cluster, which times the transfer.

While the engine only decodes (`Engine.plan_decode_run`), the pod does not step one event at
a time: it plans the whole run of decode steps — through requests' finishes, up to the next
KV shortfall or a finish that could let a waiting request in — and applies it lazily. A
request that finishes in the run is applied at its last step's end, when the client learns
it; the others when the cluster hands the pod new work (`interrupt`: a request, KV that
arrived, freed blocks), and the pod then steps normally from the end of the step in
progress. A scrape reads the queue and KV usage the started steps give without applying
them. As with `Engine.step`, a step's effects count from its start, and every step runs at
the time and with the batch it would have stepping one by one, so the records are the same
(a test holds them equal). A request's tokens between its first and its end reach the client
together at the end (`deliver`), with the time of each.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tandem.costmodel.profiles import EngineProfile
from tandem.kvcache.events import KVEvent
from tandem.planner.events import EventLoop
from tandem.simulator.config import SimPodConfig
from tandem.simulator.decode_run import DecodeRun
from tandem.simulator.engine import Engine
from tandem.simulator.kv_connector import ProducerIdentity, RemoteLoad
from tandem.simulator.request import EngineRequest, RequestOutput, StepResult

OutputHandler = Callable[[RequestOutput, Sequence[float]], None]
"""Receives an engine output and the model time of each of its new tokens."""

MIN_STEADY_STEPS, MAX_STEADY_STEPS = 16, 1024
"""Bounds of how many decode steps a pod plans at once. Planning costs per step, and under
load new work cuts a run short every few steps, so a pod plans twice as many steps as its
last run took (records do not depend on it)."""


@dataclass(slots=True)
class _Stream:
    """Where a request's outputs go, and its tokens held back since the first."""

    handler: OutputHandler
    started: bool = False
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _SteadyRun:
    """A planned decode run and how many of its steps the pod has applied to every request
    (the pod's clock and busy time follow those)."""

    run: DecodeRun
    applied: int = 0


@dataclass(eq=False)
class VirtualPod:
    name: str
    role: str
    """`llm-d.ai/role` of the endpoint: prefill, decode or both."""
    engine: Engine
    profile: EngineProfile
    loop: EventLoop
    on_remote_load: Callable[[VirtualPod, RemoteLoad], None]
    busy_s: float = 0.0
    """Virtual seconds spent in steps (utilization = busy_s / elapsed)."""
    fast_forward: bool = True
    """Take steady decode runs as one event (False: one event per step, for comparison)."""
    on_kv_events: Callable[[VirtualPod, list[KVEvent]], None] | None = None
    """Receives the KV events of each step (or applied decode steps), as the live pod
    publishes them."""
    steady_steps: int = 0
    """Steps applied as part of steady decode runs."""
    _streams: dict[str, _Stream] = field(default_factory=dict)
    _stepping: bool = False
    _last_end: float = 0.0
    _steady: _SteadyRun | None = None
    _epoch: int = 0
    _horizon: int = MIN_STEADY_STEPS
    """Steps the next decode run is planned for."""

    @classmethod
    def build(
        cls,
        name: str,
        role: str,
        config: SimPodConfig,
        loop: EventLoop,
        on_remote_load: Callable[[VirtualPod, RemoteLoad], None],
    ) -> VirtualPod:
        """The engine a live pod with this configuration runs (`simulator/server.py`)."""
        engine = Engine(
            config.engine_config(),
            ProducerIdentity(
                engine_id=name,
                side_channel_host=name,
                side_channel_port=config.side_channel_port,
                tp_size=config.engine_profile.tensor_parallel_size,
            ),
        )
        return cls(name, role, engine, config.engine_profile, loop, on_remote_load)

    def submit(self, request: EngineRequest, on_output: OutputHandler) -> None:
        self.interrupt()
        request.arrival_time = self.loop.now
        self._streams[request.request_id] = _Stream(on_output)
        self.engine.add_request(request)
        self.wake()

    def wake(self) -> None:
        """Step as soon as the previous step has ended, if there is work. Something changed
        (blocks freed, KV arrived): a steady decode run in progress yields to normal steps,
        which see the change."""
        self.interrupt()
        if not self._stepping and self.engine.has_schedulable_work:
            self._stepping = True
            self.loop.at(self._last_end, self._step)

    def deliver(self, output: RequestOutput, times: Sequence[float] | None = None) -> None:
        """Hand an output to its client: at once for a request's first token and its end,
        held back in between (the client's record needs only the tokens' times, and nothing
        else hears of them; holding them saves a call per request and step)."""
        stream = self._streams.get(output.request_id)
        if stream is None:
            return
        times = times if times is not None else (self.loop.now,)
        if output.finished:
            del self._streams[output.request_id]
            if stream.tokens:
                output = dataclasses.replace(
                    output, new_token_ids=(*stream.tokens, *output.new_token_ids)
                )
                times = (*stream.times, *times)
        elif stream.started and output.new_token_ids:
            stream.tokens += output.new_token_ids
            stream.times += times
            return
        stream.started = stream.started or bool(output.new_token_ids)
        stream.handler(output, times)

    def flush(self) -> None:
        """Hand every held-back token to its client now."""
        for request_id, stream in self._streams.items():
            if stream.tokens:
                output = RequestOutput(request_id, tuple(stream.tokens))
                stream.handler(output, stream.times)
                stream.tokens, stream.times = [], []

    def kv_usage(self) -> float:
        """The engine's KV usage now, counting the planned decode steps started by now
        without applying them (a scrape reads it; the run goes on)."""
        steady = self._steady
        if steady is None:
            return self.engine.kv_usage
        return self.engine.decode_run_kv_usage(steady.run, self._started(steady))

    def num_running(self) -> int:
        """The engine's running requests now, as `kv_usage` counts them."""
        steady = self._steady
        if steady is None:
            return self.engine.num_running
        return steady.run.num_running(self._started(steady))

    def drained(self) -> bool:
        """Nothing runs, waits or streams here, and no prefilled KV waits for its reader:
        the pod can stop without losing a request or a decoder's KV."""
        return (
            self.num_running() == 0
            and self.engine.num_waiting == 0
            and not self._streams
            and not self.engine.held.requests
        )

    def observe(self) -> None:
        """Apply the planned decode steps that have started by now, and hand every token
        produced so far to its client (the run goes on)."""
        steady = self._steady
        if steady is not None:
            self._apply(steady, self._started(steady))
        self.flush()

    def interrupt(self) -> None:
        """Apply the planned decode steps that have started by now and step normally from
        the end of the last one: the engine is about to get new work (a request, a finished
        KV read), which the next step would see."""
        steady = self._steady
        if steady is None:
            return
        self._apply(steady, self._started(steady))
        self._stop_steady()

    def _started(self, steady: _SteadyRun) -> int:
        """How many of the run's steps started before now."""
        now, run = self.loop.now, steady.run
        if run.start >= now:
            return 0
        return min(bisect.bisect_left(run.ends, now) + 1, len(run.ends))

    def _apply(self, steady: _SteadyRun, count: int) -> None:
        if count <= steady.applied:
            return
        run = steady.run
        start = run.ends[steady.applied - 1] if steady.applied else run.start
        self.steady_steps += count - steady.applied
        self.busy_s += run.ends[count - 1] - start
        steady.applied = count
        self._last_end = run.ends[count - 1]
        for output, times in self.engine.apply_decode_run(run, count):
            self.deliver(output, times)
        self._publish_kv_events()

    def _stop_steady(self) -> None:
        if self._steady is not None:
            taken = 2 * self._steady.applied
            self._horizon = min(MAX_STEADY_STEPS, max(MIN_STEADY_STEPS, taken))
        self._steady = None
        self._epoch += 1
        self._stepping = False
        self.wake()

    def _steady_finish(self, epoch: int, step: int) -> None:
        """Requests end with this step of the run: they reach their clients now."""
        steady = self._steady
        if steady is None or epoch != self._epoch:
            return  # interrupted; whatever had started is applied
        run = steady.run
        for output, times in self.engine.apply_decode_run(run, step + 1, run.finishers[step]):
            self.deliver(output, times)
        self._publish_kv_events()

    def _steady_ended(self, epoch: int) -> None:
        steady = self._steady
        if steady is None or epoch != self._epoch:
            return  # interrupted
        self._apply(steady, len(steady.run.ends))
        self._stop_steady()

    def _step(self) -> None:
        if not self.engine.has_schedulable_work:
            self._stepping = False
            return
        now = self.loop.now
        if self.fast_forward:
            run = self.engine.plan_decode_run(now, self._horizon)
            if run is not None:
                self._steady = _SteadyRun(run)
                last = len(run.ends) - 1
                for step in run.finish_steps:
                    if step < last:  # the run's end applies its last step's finishers
                        self.loop.at(run.ends[step], self._steady_finish, self._epoch, step)
                self.loop.at(run.ends[last], self._steady_ended, self._epoch)
                return
        result = self.engine.step(now)
        for load in self.engine.take_remote_loads():
            self.on_remote_load(self, load)
        self.loop.at(result.end, self._step_ended, result)

    def _publish_kv_events(self) -> None:
        if self.on_kv_events is not None:
            events = self.engine.take_kv_events()
            if events:
                self.on_kv_events(self, events)

    def _step_ended(self, result: StepResult) -> None:
        self._last_end = result.end
        self.busy_s += result.end - result.start
        self._publish_kv_events()
        for output in result.outputs:
            self.deliver(output, (result.end,))
        self._stepping = False
        if result.end > result.start or result.outputs:
            self.wake()
        # else: nothing could be scheduled (e.g. no free KV blocks until a transfer ends or
        # a lease expires); the event that changes that wakes the pod.
