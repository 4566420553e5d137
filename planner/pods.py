"""A simulated vLLM pod in virtual time: the live pod's engine core, stepped by events.

The live pod's `EngineRunner` steps the engine, sleeps (scaled wall time) until the step's
end, delivers the outputs and steps again; here the sleep is an event at the step's end. KV
reads the engine starts are handed to the cluster, which times the transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from planner.events import EventLoop
from simulator.config import SimPodConfig
from simulator.engine import Engine
from simulator.kv_connector import ProducerIdentity, RemoteLoad
from simulator.profiles import EngineProfile
from simulator.request import EngineRequest, RequestOutput, StepResult

OutputHandler = Callable[[RequestOutput], None]


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
    _streams: dict[str, OutputHandler] = field(default_factory=dict)
    _stepping: bool = False
    _last_end: float = 0.0

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
        request.arrival_time = self.loop.now
        self._streams[request.request_id] = on_output
        self.engine.add_request(request)
        self.wake()

    def wake(self) -> None:
        """Step as soon as the previous step has ended, if there is work."""
        if not self._stepping and self.engine.has_schedulable_work:
            self._stepping = True
            self.loop.at(self._last_end, self._step)

    def deliver(self, output: RequestOutput) -> None:
        handler = self._streams.get(output.request_id)
        if handler is None:
            return
        if output.finished:
            del self._streams[output.request_id]
        handler(output)

    def _step(self) -> None:
        if not self.engine.has_schedulable_work:
            self._stepping = False
            return
        result = self.engine.step(self.loop.now)
        for load in self.engine.take_remote_loads():
            self.on_remote_load(self, load)
        self.loop.at(result.end, self._step_ended, result)

    def _step_ended(self, result: StepResult) -> None:
        self._last_end = result.end
        self.busy_s += result.end - result.start
        for output in result.outputs:
            self.deliver(output)
        self._stepping = False
        if result.end > result.start or result.outputs:
            self.wake()
        # else: nothing could be scheduled (e.g. no free KV blocks until a transfer ends or
        # a lease expires); the event that changes that wakes the pod.
