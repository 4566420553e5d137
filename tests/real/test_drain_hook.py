"""The charts' preStop hook (`files/drain.py`) against the real engine: vLLM's KV usage shows
the blocks a prefill pod holds for a decoder, so the hook waits while they are held and
returns once the decoder has read them and the pod is idle."""

from __future__ import annotations

import subprocess
import sys

from tests.real.conftest import REQUEST_TIMEOUT_S, RealCluster
from tests.support.pd import MODEL, complete, words
from tests.support.processes import REPO_ROOT

HOOK = REPO_ROOT / "deploy" / "helm" / "tandem-prefill" / "files" / "drain.py"


def _hook(url: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HOOK), "--url", f"{url}/metrics", "--timeout", str(timeout_s),
         "--interval", "0.2"],
        capture_output=True, text=True, timeout=timeout_s + 30,
    )  # fmt: skip


def test_the_hook_waits_for_the_kv_a_real_prefill_pod_holds(pd_cluster: RealCluster) -> None:
    prefill = pd_cluster.component_url("prefill-0")
    prompt = words(300, offset=911)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True}}  # fmt: skip
    produced = complete(prefill, body, timeout=REQUEST_TIMEOUT_S)
    assert produced.status_code == 200, produced.text

    held = _hook(prefill, timeout_s=2)

    assert held.returncode == 1, held.stdout + held.stderr
    assert "vllm:kv_cache_usage_perc" in held.stderr
    # The decoder reads the blocks, as the sidecar would have it do; then the pod is idle.
    decoded = complete(
        pd_cluster.component_url("decode-0-vllm"),
        {"model": MODEL, "prompt": prompt, "max_tokens": 2,
         "kv_transfer_params": produced.json()["kv_transfer_params"]},
        timeout=REQUEST_TIMEOUT_S,
    )  # fmt: skip
    assert decoded.status_code == 200, decoded.text
    idle = _hook(prefill, timeout_s=30)
    assert idle.returncode == 0, idle.stdout + idle.stderr
    assert "drain: idle" in idle.stdout
