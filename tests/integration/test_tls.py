"""TLS and mutual TLS between the hops: the orchestrator calls and scrapes the sidecar and the
prefill pod over TLS with a client certificate; the sidecar calls the prefill pod the same
way; a caller without a valid certificate is refused. Certificates come from a test CA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tandem.http.tls import ClientTLS, ServerTLS
from tests.integration.test_gateway import _healthy as healthy
from tests.integration.test_gateway import gateway
from tests.support.pd import MODEL, decode_config, prefill_config, running_sidecar, words
from tests.support.servers import running_pod, wait_until


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: ServerTLS
    """Serves 127.0.0.1 and requires a client certificate from the CA."""
    client: ClientTLS
    """Trusts the CA and presents a certificate it signed."""


def _certificates(tmp: Path) -> Certificates:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp / "ca.pem")
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(tmp / "server.pem")
    server.private_key_pem.write_to_path(tmp / "server.key")
    client = ca.issue_cert("tandem-orchestrator")
    client.cert_chain_pems[0].write_to_path(tmp / "client.pem")
    client.private_key_pem.write_to_path(tmp / "client.key")
    return Certificates(
        ca=tmp / "ca.pem",
        server=ServerTLS(
            cert_file=str(tmp / "server.pem"),
            key_file=str(tmp / "server.key"),
            client_ca_file=str(tmp / "ca.pem"),
        ),
        client=ClientTLS(
            enabled=True,
            ca_file=str(tmp / "ca.pem"),
            cert_file=str(tmp / "client.pem"),
            key_file=str(tmp / "client.key"),
        ),
    )


@dataclass(frozen=True)
class TLSStack:
    certificates: Certificates
    prefill_port: int
    sidecar_url: str

    def endpoints(self) -> list[dict[str, object]]:
        sidecar_port = int(self.sidecar_url.rsplit(":", 1)[1])
        return [
            {
                "name": "prefill-0",
                "host": "127.0.0.1",
                "port": self.prefill_port,
                "role": "prefill",
            },
            {"name": "decode-0", "host": "127.0.0.1", "port": sidecar_port, "role": "decode"},
        ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSStack]:
    """A prefill pod serving mTLS, a plain decode pod behind a sidecar that serves mTLS and
    calls the prefill pod over mTLS."""
    certificates = _certificates(tmp_path_factory.mktemp("tls"))
    prefill, decode = prefill_config(), decode_config()
    with ExitStack() as stack:
        stack.enter_context(running_pod(prefill, tls=certificates.server))
        stack.enter_context(running_pod(decode))
        sidecar = stack.enter_context(
            running_sidecar(
                decode.port,
                (prefill.port,),
                tls=certificates.server,
                prefill_tls=certificates.client,
            )
        )
        yield TLSStack(certificates, prefill.port, sidecar.url)


def test_a_disaggregated_request_crosses_every_leg_over_mutual_tls(stack: TLSStack) -> None:
    assert stack.sidecar_url.startswith("https://")
    with gateway(
        stack.endpoints(),
        scheduler="round-robin",
        upstream_tls=stack.certificates.client.model_dump(),
    ) as url:
        assert wait_until(lambda: healthy(url) == 2)  # scraped over mTLS
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": words(200), "max_tokens": 4},
            timeout=30,
        )
        metrics = httpx.get(f"{url}/metrics", timeout=10).text

    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 4
    assert 'tandem_pd_decisions_total{decision="disaggregate"' in metrics
    sidecar_metrics = httpx.get(
        f"{stack.sidecar_url}/metrics", verify=stack.certificates.client.verify(), timeout=10
    ).text
    assert 'tandem_sidecar_requests_total{mode="disaggregated"} 1.0' in sidecar_metrics


def test_a_caller_without_a_client_certificate_is_refused(stack: TLSStack) -> None:
    trusting_only = ClientTLS(enabled=True, ca_file=str(stack.certificates.ca))

    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.sidecar_url}/health", verify=trusting_only.verify(), timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"https://127.0.0.1:{stack.prefill_port}/health", verify=trusting_only.verify())
    # Plain HTTP to a TLS port is no way round it either.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{stack.sidecar_url.replace('https', 'http')}/health", timeout=10)


def test_an_orchestrator_without_a_certificate_serves_nothing(stack: TLSStack) -> None:
    trusting_only = {"enabled": True, "ca_file": str(stack.certificates.ca)}
    with gateway(stack.endpoints(), upstream_tls=trusting_only, scrape={"interval_s": 0.1}) as url:
        assert not wait_until(lambda: healthy(url) > 0, timeout_s=1.5)
        reply = httpx.post(
            f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi"}, timeout=10
        )

    assert reply.status_code == 503
