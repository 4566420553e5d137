"""The default decider behind a live gateway: an idle prefill pool takes long prompts, a
saturated one sends them to decode pods that have room, a prefill pod serves a request whole
when the decode pool is out of KV room, each decision counted by reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

import tandem.orchestrator as orchestrator
from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import parse_orchestrator_config
from tests.support.fakes import Recorder, recording_server
from tests.support.pd import MODEL, PREFILLER, words
from tests.support.servers import free_port, scrape, serve, wait_until

DECISIONS = "tandem_pd_decisions_total"


def _scheduler(*, idle_rule: bool = False) -> dict[str, Any]:
    """tandem.yaml with the decider's rate at 1,000 tokens/s (a 3,000-token prompt in flight
    on the prefill pod is a 3 s queue, past the 0.5 s limit), no bound on the step a local
    prefill makes (at that rate any prompt's would pass it) and its idle rule off."""
    path = Path(orchestrator.__file__).parent / "configs" / "tandem.yaml"
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    for plugin in document["plugins"]:
        if plugin.get("name") == "pd-decider":
            assert plugin["type"] == "elastic-pd-decider"
            plugin["parameters"]["prefillTokensPerSecond"] = 1000
            plugin["parameters"]["itlBudgetMs"] = None
            # The fake decode pods report nothing running: idle pods would prefill in place.
            plugin["parameters"]["idleDecodePrefill"] = idle_rule
    return document


@contextmanager
def cluster(
    decode: Recorder, *, idle_rule: bool = False, prefill: Recorder | None = None
) -> Iterator[str]:
    """A gateway over one prefill and two decode endpoints (fakes that record and hold their
    answers), scheduling with the default decider."""
    prefill_port, decode_ports, port = free_port(), (free_port(), free_port()), free_port()
    config = parse_orchestrator_config(
        {
            "endpoints": [
                {"name": "prefill-0", "host": "127.0.0.1", "port": prefill_port,
                 "role": "prefill"},
                *({"name": f"decode-{i}", "host": "127.0.0.1", "port": p, "role": "decode"}
                  for i, p in enumerate(decode_ports)),
            ],
            "gateway": {"port": port},
            "scrape": {"interval_s": 0.1},
            "scheduler": _scheduler(idle_rule=idle_rule),
            "seed": 3,
        }
    )  # fmt: skip
    with (
        serve(recording_server(prefill or Recorder()), prefill_port),
        serve(recording_server(decode), decode_ports[0]),
        serve(recording_server(decode), decode_ports[1]),
        serve(create_app(config), port) as url,
    ):
        assert wait_until(lambda: httpx.get(f"{url}/ready", timeout=5).json()["healthy"] == 3)
        yield url


def _complete(url: str, prompt: str, **fields: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, **fields}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def _decisions(url: str) -> dict[str, float]:
    return {k: v for k, v in scrape(url).items() if k.startswith(DECISIONS)}


def test_an_idle_prefill_pool_takes_a_long_prompt() -> None:
    decode = Recorder()
    with cluster(decode) as url:
        reply = _complete(url, words(3000, 1))
        decisions = _decisions(url)

    assert reply.status_code == 200
    assert decode.headers[-1][PREFILLER].startswith("127.0.0.1:")
    assert decisions == {
        f"{DECISIONS}{{decision=disaggregate,reason=uncached_above_threshold}}": 1.0
    }


def test_a_saturated_prefill_pool_sends_the_next_long_prompt_to_a_decode_pod() -> None:
    decode = Recorder(delay_s=2.0)  # the first request holds its prefill tokens meanwhile
    with cluster(decode) as url:
        first = threading.Thread(target=_complete, args=(url, words(3000, 1)))
        first.start()
        try:
            assert wait_until(lambda: len(decode.headers) == 1)
            reply = _complete(url, words(3000, 2))
        finally:
            first.join()
        decisions = _decisions(url)

    assert reply.status_code == 200
    assert PREFILLER in decode.headers[0]
    assert PREFILLER not in decode.headers[1]
    assert decisions == {
        f"{DECISIONS}{{decision=disaggregate,reason=uncached_above_threshold}}": 1.0,
        f"{DECISIONS}{{decision=local,reason=prefill_pool_busy}}": 1.0,
    }


def test_an_idle_decode_pod_prefills_a_long_prompt_in_place() -> None:
    decode = Recorder()
    with cluster(decode, idle_rule=True) as url:
        reply = _complete(url, words(3000, 1))
        decisions = _decisions(url)

    assert reply.status_code == 200
    assert PREFILLER not in decode.headers[-1]
    assert decisions == {f"{DECISIONS}{{decision=local,reason=decode_pod_idle}}": 1.0}


def test_a_prefill_pod_serves_a_request_whole_when_the_decode_pool_is_out_of_room() -> None:
    decode, prefill = Recorder(kv_usage=0.95), Recorder()
    with cluster(decode, prefill=prefill, idle_rule=True) as url:
        reply = _complete(url, words(3000, 1), kv_transfer_params={"do_remote_decode": True})
        decisions = _decisions(url)

    assert reply.status_code == 200
    assert decode.bodies == []
    assert len(prefill.bodies) == 1
    assert prefill.bodies[0]["max_tokens"] == 4  # the client's request, not a prefill leg
    assert "kv_transfer_params" not in prefill.bodies[0]  # only tandem may set it
    assert PREFILLER not in prefill.headers[0]
    assert decisions == {f"{DECISIONS}{{decision=local,reason=decode_pool_short}}": 1.0}
