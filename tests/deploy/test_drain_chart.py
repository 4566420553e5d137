"""Draining a pod that is being deleted: the charts' preStop hook on the vLLM container and the
grace period around it, and the hook itself, run as rendered against a live simulated pod: it
returns once the pod is idle (no request, no KV held for a decoder), and not before."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import trustme

from tandem.http.tls import ServerTLS
from tandem.simulator.kv_connector import RemotePrefill
from tandem.simulator.transfer import SideChannelClient
from tests.deploy.conftest import (
    CHARTS_DIR,
    NAMESPACE,
    RELEASE,
    REQUIRED,
    Rendered,
)
from tests.support.pd import MODEL, prefill_config, words
from tests.support.servers import free_port, running_pod, wait_until

ROLES = ("prefill", "decode")
VLLM_PORT = {"prefill": 8000, "decode": 8200}
TLS_DIR = "/etc/tandem-tls"


def drain_script(chart: str) -> str:
    return (CHARTS_DIR / chart / "files" / "drain.py").read_text()


def pre_stop(container: dict[str, Any]) -> list[str]:
    command: list[str] = container["lifecycle"]["preStop"]["exec"]["command"]
    return command


def hook_of(charts: dict[str, helm_python.Chart], chart: str, **values: Any) -> list[str]:
    """The vLLM container's preStop command, rendered with these values."""
    files = charts[chart].render({**REQUIRED[chart], **values}, name=RELEASE, namespace=NAMESPACE)
    deployment = next(text for path, text in files.items() if path.endswith("deployment.yaml"))
    rendered = Rendered(chart, "custom", {}, {"deployment.yaml": deployment})
    return pre_stop(rendered.container("vllm"))


def options(command: list[str]) -> dict[str, str]:
    """The hook's `--name value` arguments after the script."""
    args = command[3:]
    return dict(zip(args[::2], args[1::2], strict=True))


# -- what the charts render ----------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "simulated", "tls"])
@pytest.mark.parametrize("role", ROLES)
def test_the_vllm_container_waits_for_idle_before_sigterm(
    rendered: dict[tuple[str, str], Rendered], role: str, scenario: str
) -> None:
    chart = f"tandem-{role}"
    r = rendered[chart, scenario]
    drain = r.values["drain"]
    command = pre_stop(r.container("vllm"))
    args = options(command)
    url = args.pop("--url")
    tls = role == "prefill" and scenario == "tls"  # a decode pod's vLLM is behind the sidecar

    assert command[:3] == ["python3", "-c", drain_script(chart)]
    # The pod's own vLLM, on the port and with the scheme its probes use.
    assert url == f"{'https' if tls else 'http'}://127.0.0.1:{VLLM_PORT[role]}/metrics"
    assert args == {
        "--sleep": str(drain["preStopSleepSeconds"]),
        "--grace": str(drain["graceSeconds"]),
        "--timeout": str(drain["timeoutSeconds"]),
        **(
            {
                "--cafile": f"{TLS_DIR}/ca.crt",
                "--certfile": f"{TLS_DIR}/tls.crt",
                "--keyfile": f"{TLS_DIR}/tls.key",
            }
            if tls
            else {}
        ),
    }
    assert r.pod_spec["terminationGracePeriodSeconds"] == drain["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("role", ROLES)
def test_the_grace_period_outlasts_a_kv_lease_and_the_hook(
    rendered: dict[tuple[str, str], Rendered], role: str
) -> None:
    values = rendered[f"tandem-{role}", "defaults"].values
    drain = values["drain"]

    assert drain["timeoutSeconds"] >= drain["preStopSleepSeconds"] + values["kv"]["leaseDuration"]
    assert drain["terminationGracePeriodSeconds"] > drain["timeoutSeconds"]
    assert drain["terminationGracePeriodSeconds"] > 30  # more than Kubernetes' default


def test_the_decode_sidecar_has_no_hook_of_its_own(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    # A native sidecar gets SIGTERM only once vLLM has exited: vLLM's hook holds both back.
    sidecar = rendered["tandem-decode", "defaults"].container("sidecar", init=True)

    assert sidecar["restartPolicy"] == "Always"
    assert "lifecycle" not in sidecar


def test_both_charts_ship_the_same_hook() -> None:
    assert drain_script("tandem-prefill") == drain_script("tandem-decode")


@pytest.mark.parametrize("role", ROLES)
def test_without_drain_there_is_no_hook(charts: dict[str, helm_python.Chart], role: str) -> None:
    chart = f"tandem-{role}"
    with pytest.raises(KeyError):
        hook_of(charts, chart, drain={"enabled": False})


@pytest.mark.parametrize("role", ROLES)
def test_a_grace_period_the_hook_could_outlast_is_refused(
    charts: dict[str, helm_python.Chart], role: str
) -> None:
    chart = f"tandem-{role}"
    values = {
        **REQUIRED[chart],
        "drain": {"timeoutSeconds": 60, "terminationGracePeriodSeconds": 60},
    }

    with pytest.raises(helm_python.HelmError, match=re.escape("must exceed drain.timeoutSeconds")):
        charts[chart].render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({"drain": {"timeoutSeconds": 0}}, "/drain/timeoutSeconds"),
        ({"drain": {"preStopSleep": 5}}, "'preStopSleep'"),
        # The grace period moved into `drain`.
        ({"terminationGracePeriodSeconds": 30}, "'terminationGracePeriodSeconds'"),
    ],
)
@pytest.mark.parametrize("role", ROLES)
def test_the_schema_refuses_bad_drain_values(
    charts: dict[str, helm_python.Chart], role: str, bad: dict[str, Any], key: str
) -> None:
    chart = f"tandem-{role}"
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(key)):
        charts[chart].validate_schema({**REQUIRED[chart], **bad})


# -- the rendered hook against a live simulated pod ----------------------------------------

QUICK = {"preStopSleepSeconds": 0, "graceSeconds": 0}
"""No wait before the first read nor after the last: the test is about the reads."""


@contextmanager
def hook(
    command: list[str], url: str, tls_dir: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run the rendered hook against `url` (the pod's address in place of the container's),
    with the certificates from `tls_dir` in place of the mounted ones."""
    assert command[0] == "python3"
    args = [re.sub(r"^https?://127\.0\.0\.1:\d+/", f"{url}/", arg) for arg in command[1:]]
    if tls_dir is not None:
        args = [arg.replace(TLS_DIR, str(tls_dir)) for arg in args]
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None and not process.stdout.closed:
            process.communicate(timeout=10)


def hold_kv(url: str) -> RemotePrefill:
    """Prefill a prompt for a remote decoder: the pod holds its KV until the decoder is done."""
    reply = httpx.post(
        f"{url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": words(100),
            "max_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False},
        },
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    source = RemotePrefill.parse(reply.json()["kv_transfer_params"])
    assert source is not None
    return source


def test_the_hook_returns_once_the_decoder_has_read_the_held_kv(
    charts: dict[str, helm_python.Chart],
) -> None:
    command = hook_of(charts, "tandem-prefill", drain={**QUICK, "timeoutSeconds": 20})
    # At wall-clock speed the 30 s KV lease outlasts the test: only the decoder frees the KV.
    with running_pod(prefill_config(time_scale=1.0)) as url:
        source = hold_kv(url)
        with hook(command, url) as process:
            # Idle, it would have returned after two reads a second apart.
            held_back = not wait_until(lambda: process.poll() is not None, timeout_s=2.5)
            released = asyncio.run(SideChannelClient().done(source))
            # Well before its 20 s timeout, and idle (a timeout would exit 1).
            returned = wait_until(lambda: process.poll() is not None, timeout_s=5)

    assert held_back
    assert released
    assert returned
    assert process.returncode == 0


def test_the_hook_gives_up_at_its_timeout_naming_what_is_still_busy(
    charts: dict[str, helm_python.Chart],
) -> None:
    command = hook_of(charts, "tandem-prefill", drain={**QUICK, "timeoutSeconds": 2})
    with running_pod(prefill_config(time_scale=1.0)) as url:
        hold_kv(url)
        with hook(command, url) as process:
            output, _ = process.communicate(timeout=10)

    assert process.returncode == 1, output
    assert "not idle after 2 s" in output  # it gave up at its timeout, as it says
    assert "vllm:kv_cache_usage_perc" in output


def test_the_hook_reads_a_pod_serving_mutual_tls_with_the_mounted_certificates(
    charts: dict[str, helm_python.Chart], tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    # The pod's certificate names its service, not the loopback address the hook calls.
    pod = ca.issue_cert(f"{RELEASE}-prefill.{NAMESPACE}.svc")
    pod.cert_chain_pems[0].write_to_path(tmp_path / "tls.crt")
    pod.private_key_pem.write_to_path(tmp_path / "tls.key")
    served = ServerTLS(
        cert_file=str(tmp_path / "tls.crt"),
        key_file=str(tmp_path / "tls.key"),
        client_ca_file=str(tmp_path / "ca.crt"),
    )
    tls = {"enabled": True, "secretName": "llama-tls", "mutual": True}
    command = hook_of(charts, "tandem-prefill", tls=tls, drain={**QUICK, "timeoutSeconds": 10})

    with running_pod(prefill_config(), tls=served) as url, hook(command, url, tmp_path) as process:
        output, _ = process.communicate(timeout=15)

    assert url.startswith("https://")
    assert process.returncode == 0, output
    assert "drain: idle" in output


def test_the_hook_does_not_wait_for_a_server_that_is_gone(
    charts: dict[str, helm_python.Chart],
) -> None:
    command = hook_of(charts, "tandem-decode", drain={**QUICK, "timeoutSeconds": 20})
    with hook(command, f"http://127.0.0.1:{free_port()}") as process:  # nothing listens there
        output, _ = process.communicate(timeout=10)

    assert process.returncode == 0, output
    assert "refuses connections" in output
