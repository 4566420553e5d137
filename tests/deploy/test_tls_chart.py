"""TLS in the charts: the certificates from one Secret, the prefill pods' vLLM serving mutual
TLS, the sidecar serving it and calling the prefill pods over it, the orchestrator calling and
scraping both with its client certificate; probes that need no client certificate."""

from __future__ import annotations

import yaml

from tandem.cli import build_parser
from tandem.cli.common import options_from
from tandem.cli.sidecar import SidecarOptions, sidecar_config
from tandem.http.tls import ClientTLS, ServerTLS
from tandem.orchestrator.config import parse_orchestrator_config
from tests.deploy.conftest import TLS_SECRET, Rendered

DIR = "/etc/tandem-tls"
MOUNT = {"name": "tls", "mountPath": DIR, "readOnly": True}
SECRET = {"name": "tls", "secret": {"secretName": TLS_SECRET}}
SERVED = ServerTLS(
    cert_file=f"{DIR}/tls.crt", key_file=f"{DIR}/tls.key", client_ca_file=f"{DIR}/ca.crt"
)
CALLER = ClientTLS(
    enabled=True, ca_file=f"{DIR}/ca.crt", cert_file=f"{DIR}/tls.crt", key_file=f"{DIR}/tls.key"
)


def test_the_prefill_pods_serve_mutual_tls_from_the_secret(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered["tandem-prefill", "tls"]
    vllm = r.container("vllm")

    args = vllm["args"]
    assert args[args.index("--ssl-certfile") :][:8] == [
        "--ssl-certfile", f"{DIR}/tls.crt", "--ssl-keyfile", f"{DIR}/tls.key",
        "--ssl-ca-certs", f"{DIR}/ca.crt", "--ssl-cert-reqs", "2",
    ]  # fmt: skip
    assert MOUNT in vllm["volumeMounts"]
    assert SECRET in r.pod_spec["volumes"]
    for kind in ("startup", "readiness", "liveness"):
        assert vllm[f"{kind}Probe"]["tcpSocket"] == {"port": 8000}


def test_the_sidecar_serves_mutual_tls_and_calls_the_prefill_pods_over_it(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered["tandem-decode", "tls"]
    sidecar = r.container("sidecar", init=True)

    args = build_parser().parse_args([*sidecar["command"][1:], *sidecar["args"]])
    config = sidecar_config(options_from(SidecarOptions, args))

    assert config.tls == SERVED
    assert config.prefill_tls == CALLER
    assert sidecar["volumeMounts"] == [MOUNT]
    assert SECRET in r.pod_spec["volumes"]
    assert sidecar["readinessProbe"]["tcpSocket"] == {"port": 8000}
    assert "ssl" not in " ".join(r.container("vllm")["args"])  # vLLM behind it: loopback


def test_the_orchestrator_calls_and_scrapes_the_pods_with_its_certificate(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered["tandem-orchestrator", "tls"]

    config = parse_orchestrator_config(
        yaml.safe_load(r.configuration()["data"]["orchestrator.yaml"])
    )

    assert config.upstream_tls == CALLER
    assert MOUNT in r.container("orchestrator")["volumeMounts"]
    assert SECRET in r.pod_spec["volumes"]


def test_without_tls_no_leg_is_encrypted(rendered: dict[tuple[str, str], Rendered]) -> None:
    orchestrator = rendered["tandem-orchestrator", "defaults"]
    config = parse_orchestrator_config(
        yaml.safe_load(orchestrator.configuration()["data"]["orchestrator.yaml"])
    )

    assert config.upstream_tls.enabled is False
    assert "--ssl-certfile" not in rendered["tandem-prefill", "defaults"].container("vllm")["args"]
