"""A stopping producer's wait for its consumers: it ends when the last held block set is read
and released or its lease runs out, and gives up at its timeout with the holds it has left."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tandem.costmodel.profiles import get_profile
from tandem.simulator.engine import Engine
from tandem.simulator.runner import EngineRunner, KVDrain, ModelClock
from tandem.simulator.transfer import SideChannelClient
from tests.unit.engine_support import make_engine, make_request, prompt_of, run_until_idle

HELD = ("p-0", "p-1", "p-2")


def producer_holding(request_ids: tuple[str, ...], lease_s: int = 30) -> Engine:
    """A producer that has prefilled these requests for remote decoders and holds their KV."""
    base = make_engine(engine_id="prefill-0")
    engine = Engine(dataclasses.replace(base.config, kv_lease_duration=lease_s), base.identity)
    for i, request_id in enumerate(request_ids):
        params = {"do_remote_decode": True, "do_remote_prefill": False}
        prompt = prompt_of(10, start=100 * (i + 1))
        engine.add_request(
            make_request(request_id, prompt, max_tokens=1, kv_transfer_params=params)
        )
    run_until_idle(engine)
    assert sorted(engine.held.requests) == sorted(request_ids)
    return engine


@asynccontextmanager
async def running(engine: Engine, time_scale: float = 1.0) -> AsyncIterator[EngineRunner]:
    runner = EngineRunner(
        engine, get_profile("llama-3.1-8b-h100-tp1"), ModelClock(time_scale), SideChannelClient()
    )
    runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def release(runner: EngineRunner, request_id: str) -> None:
    """The consumer's "done" after its read, as the side channel hands it over."""
    assert runner.handle_side_channel({"op": "done", "request_id": request_id})["released"]


async def test_the_wait_ends_when_consumers_have_released_every_hold() -> None:
    async with running(producer_holding(HELD)) as runner:
        drain = asyncio.create_task(runner.drain_held_kv(timeout_s=30))
        await asyncio.sleep(0)  # the wait begins, with all three held
        for request_id in HELD[:-1]:
            release(runner, request_id)
        await asyncio.wait({drain}, timeout=0.1)
        waiting_for_the_last = not drain.done()
        release(runner, HELD[-1])
        result = await asyncio.wait_for(drain, timeout=5)

    assert waiting_for_the_last
    assert (result.held, result.expired, result.left) == (3, 0, 0)


async def test_leases_running_out_end_the_wait_too() -> None:
    # Nobody reads: a 1 s lease at a twentieth of wall time expires 50 ms in.
    async with running(producer_holding(HELD[:2], lease_s=1), time_scale=0.05) as runner:
        result = await asyncio.wait_for(runner.drain_held_kv(timeout_s=30), timeout=5)

    assert (result.held, result.expired, result.left) == (2, 2, 0)


async def test_the_wait_gives_up_at_its_timeout_and_reports_what_is_left() -> None:
    # Nobody reads and the lease (30 s) outlasts the timeout: only the timeout ends the wait.
    async with running(producer_holding(HELD[:1])) as runner:
        result = await asyncio.wait_for(runner.drain_held_kv(timeout_s=0.2), timeout=5)
        still_held = list(runner.engine.held.requests)

    assert dataclasses.replace(result, waited_s=0.0) == KVDrain(1, 0, 1, 0.0)
    assert still_held == ["p-0"]


async def test_a_producer_holding_nothing_does_not_wait() -> None:
    async with running(make_engine()) as runner:
        result = await asyncio.wait_for(runner.drain_held_kv(timeout_s=30), timeout=1)

    assert (result.held, result.expired, result.left) == (0, 0, 0)
