"""Two simulated pods on one machine, asked for KV events on the same wildcard endpoint, each
bind only the address they serve on, so both publish."""

from __future__ import annotations

from tandem.kvcache.events import KVEventsConfig
from tandem.simulator.kv_events import KVEventPublisher
from tests.support.servers import free_port


async def test_pods_on_two_addresses_share_an_events_port() -> None:
    port = free_port()
    config = KVEventsConfig(enable_kv_cache_events=True, endpoint=f"tcp://*:{port}")
    publishers = [KVEventPublisher(config, host=host) for host in ("127.0.0.1", "127.0.0.2")]
    try:
        for publisher in publishers:
            publisher.start()  # the second would fail with EADDRINUSE on every interface
    finally:
        for publisher in publishers:
            await publisher.stop()
