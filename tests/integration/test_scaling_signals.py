"""Live scaling signals: the orchestrator's desired prefill replicas rise while a burst of long
prompts queues on the prefill pod, and fall back to one once the queue has drained and the
window has passed."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.test_gateway import _healthy as healthy
from tests.integration.test_gateway import gateway
from tests.support.pd import MODEL, complete, pd_stack, prefill_config, words
from tests.support.servers import wait_until

PROFILE = "llama-3.1-8b-h100-tp1"
BURST = 12
PROMPT_WORDS = 6000
"""About 0.16 s of model time each on the profile's prefill: the burst queues ~2 s."""


def _gauge(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{wanted}}} is not exported"
    return float(match.group(1))


def test_desired_prefill_replicas_follow_the_prefill_queue() -> None:
    # The prefill pod runs in model time (time scale 1), so the burst really queues there.
    with pd_stack(prefill=prefill_config(time_scale=1.0)) as pd:
        sidecar_port = int(pd.sidecar_url.rsplit(":", 1)[1])
        endpoints = [
            {"name": "prefill-0", "host": "127.0.0.1", "port": pd.prefill.port, "role": "prefill"},
            {"name": "decode-0", "host": "127.0.0.1", "port": sidecar_port, "role": "decode"},
        ]
        scaling = {"profile": PROFILE, "time_scale": 1.0, "ttft_s": 0.5, "window_s": 3.0}
        with gateway(endpoints, scaling=scaling) as url:
            assert wait_until(lambda: healthy(url) == 2)
            assert _gauge(url, "tandem_pool_desired_replicas", pool="prefill") == 1
            assert _gauge(url, "tandem_pool_replicas", pool="prefill") == 1

            bodies = [
                {"model": MODEL, "prompt": words(PROMPT_WORDS, offset=101 + i), "max_tokens": 2}
                for i in range(BURST)
            ]
            peak_desired = peak_backlog = 0.0
            with ThreadPoolExecutor(BURST) as pool:
                answers = [pool.submit(complete, url, body) for body in bodies]
                while not all(answer.done() for answer in answers):
                    desired = _gauge(url, "tandem_pool_desired_replicas", pool="prefill")
                    backlog = _gauge(
                        url, "tandem_pool_replicas_needed", pool="prefill", signal="prefill_backlog"
                    )
                    peak_desired, peak_backlog = (
                        max(peak_desired, desired),
                        max(peak_backlog, backlog),
                    )
                    time.sleep(0.05)
                statuses = [answer.result().status_code for answer in answers]

            assert statuses == [200] * BURST
            assert peak_backlog > 2  # the queue held more than two pods clear within the TTFT
            assert peak_desired >= 3
            # The queue is gone at once; the rate's window passes, and one pod is enough again.
            backlog = _gauge(
                url, "tandem_pool_replicas_needed", pool="prefill", signal="prefill_backlog"
            )
            assert backlog == 0
            assert wait_until(
                lambda: _gauge(url, "tandem_pool_desired_replicas", pool="prefill") == 1,
                timeout_s=10,
            )
            assert _gauge(url, "tandem_pool_desired_replicas", pool="decode") == 1
