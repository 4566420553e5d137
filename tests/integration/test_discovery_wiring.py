"""The orchestrator's pools and the sidecar's prefill allowlist follow Kubernetes discovery."""

from __future__ import annotations

from pathlib import Path

import httpx

from tandem.orchestrator.app import create_app
from tandem.orchestrator.config import parse_orchestrator_config
from tests.support.fake_kube import FakeKubeAPI, write_kubeconfig
from tests.support.pd import (
    MODEL,
    complete,
    decode_config,
    prefill_config,
    running_sidecar,
)
from tests.support.servers import free_port, pod_config, running_pod, serve, wait_until

PREFILL_LABELS = {"llm-d.ai/model": "llama-8b", "llm-d.ai/role": "prefill"}
BOTH_LABELS = {"llm-d.ai/model": "llama-8b", "llm-d.ai/role": "both"}


def test_the_sidecar_allows_exactly_the_ready_prefill_pods(tmp_path: Path) -> None:
    api = FakeKubeAPI(namespace="serving")
    prefill, decode = prefill_config(), decode_config()
    target = f"127.0.0.1:{prefill.port}"
    body = {"model": MODEL, "prompt": "hello there", "max_tokens": 3}

    with (
        serve(api.app(), free_port()) as api_url,
        running_pod(prefill),
        running_pod(decode),
        running_sidecar(
            decode.port,
            prefill_discovery={
                "selector": "llm-d.ai/model=llama-8b,llm-d.ai/role=prefill",
                "port": prefill.port,
                "kubeconfig": str(write_kubeconfig(tmp_path / "kubeconfig", api_url)),
            },
        ) as sidecar,
    ):
        assert wait_until(lambda: api.watches() >= 1)
        refused = complete(sidecar.url, body, target)
        api.put_pod("prefill-0", ip="127.0.0.1", labels=PREFILL_LABELS)
        assert wait_until(lambda: complete(sidecar.url, body, target).status_code == 200)
        api.put_pod("prefill-0", ip="127.0.0.1", ready=False, labels=PREFILL_LABELS)
        assert wait_until(lambda: complete(sidecar.url, body, target).status_code == 403)

    assert refused.status_code == 403
    assert "not a known prefill endpoint" in refused.json()["error"]["message"]
    assert api.calls[0].namespace == "serving"  # the kubeconfig context's namespace


def test_the_orchestrator_serves_the_pods_discovery_finds(tmp_path: Path) -> None:
    api = FakeKubeAPI(namespace="serving")
    pod = pod_config(role="both", time_scale=0.05)
    port = free_port()

    with serve(api.app(), free_port()) as api_url, running_pod(pod):
        config = parse_orchestrator_config(
            {
                "scheduler": "tandem",
                "kubernetes": {
                    "selector": "llm-d.ai/model=llama-8b",
                    "namespace": "serving",
                    "port": pod.port,
                    "kubeconfig": str(write_kubeconfig(tmp_path / "kubeconfig", api_url)),
                },
                "scrape": {"interval_s": 0.1},
            }
        )
        with serve(create_app(config), port) as url:
            not_ready = httpx.get(f"{url}/ready")
            api.put_pod("pod-0", ip="127.0.0.1", labels=BOTH_LABELS)
            assert wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200)
            reply = complete(url, {"model": MODEL, "prompt": "hello there", "max_tokens": 3})
            api.delete_pod("pod-0")
            assert wait_until(lambda: httpx.get(f"{url}/ready").status_code == 503)
            gone = complete(url, {"model": MODEL, "prompt": "hello there", "max_tokens": 3})

    assert not_ready.status_code == 503
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 3
    assert gone.status_code == 503
    assert gone.json()["error"]["message"]
