"""A seeded few hundred of `tandem fuzz`'s cases against a gateway and a sidecar in front of
simulated pods: no 5xx, no dropped connection, every error in OpenAI's shape. `tandem fuzz`
runs the same generator for 10,000 cases."""

from __future__ import annotations

from contextlib import ExitStack

from tandem.bench.fuzz import FuzzTargets, run_fuzz
from tests.integration.test_gateway import gateway, ready
from tests.support.pd import address, decode_config, prefill_config, running_sidecar
from tests.support.servers import running_pod, wait_until

CASES = 300


def test_seeded_fuzz_cases_get_the_answers_clients_are_promised() -> None:
    prefill, decode = prefill_config(), decode_config()
    with ExitStack() as stack:
        stack.enter_context(running_pod(prefill))
        stack.enter_context(running_pod(decode))
        sidecar = stack.enter_context(running_sidecar(decode.port, (prefill.port,)))
        endpoints = [
            {"name": "prefill-0", "host": "127.0.0.1", "port": prefill.port, "role": "prefill"},
            {"name": "decode-0", "host": "127.0.0.1",
             "port": int(sidecar.url.rsplit(":", 1)[1]), "role": "decode"},
        ]  # fmt: skip
        url = stack.enter_context(gateway(endpoints))
        assert wait_until(lambda: ready(url))
        report = run_fuzz(
            FuzzTargets(url, sidecar.url, address(prefill.port)), cases_to_run=CASES, seed_value=0
        )

    assert report.cases == CASES
    assert report.examples == []
    assert report.violations == 0
    assert set(report.by_target) == {"gateway", "sidecar"}
    # The generator reaches both served and refused requests.
    assert any(status.startswith("2") for status in report.statuses)
    assert any(status.startswith("4") for status in report.statuses)
