"""TLS from the command line: vLLM's `--ssl-*` flags on `tandem sim` and `tandem sidecar`,
and the sidecar's settings for calling the prefill pods."""

from __future__ import annotations

import ssl

import pytest

from tandem.cli import build_parser
from tandem.cli.common import options_from, server_tls
from tandem.cli.sidecar import SidecarOptions, sidecar_config
from tandem.cli.sim import SimOptions, sim_config
from tandem.errors import UsageError
from tandem.http.tls import ClientTLS, ServerTLS

SERVE_MTLS = [
    "--ssl-certfile", "/tls/tls.crt", "--ssl-keyfile", "/tls/tls.key",
    "--ssl-ca-certs", "/tls/ca.crt", "--ssl-cert-reqs", "2",
]  # fmt: skip


def test_the_sidecar_serves_mutual_tls_and_calls_the_prefill_pods_over_it() -> None:
    args = build_parser().parse_args(
        ["sidecar", *SERVE_MTLS, "--prefill-ca-certs", "/tls/ca.crt",
         "--prefill-certfile", "/tls/tls.crt", "--prefill-keyfile", "/tls/tls.key"]
    )  # fmt: skip

    config = sidecar_config(options_from(SidecarOptions, args))

    assert config.tls == ServerTLS(
        cert_file="/tls/tls.crt", key_file="/tls/tls.key", client_ca_file="/tls/ca.crt"
    )
    assert config.prefill_tls == ClientTLS(
        enabled=True, ca_file="/tls/ca.crt", cert_file="/tls/tls.crt", key_file="/tls/tls.key"
    )
    assert config.prefill_tls.scheme == "https"


def test_without_flags_every_leg_is_plain_http() -> None:
    config = sidecar_config(options_from(SidecarOptions, build_parser().parse_args(["sidecar"])))

    assert config.tls is None
    assert config.prefill_tls.scheme == "http"


def test_the_simulated_pod_takes_vllms_flags_and_prints_them_for_vllm() -> None:
    args = build_parser().parse_args(["sim", "--role", "prefill", *SERVE_MTLS])

    launch, _ = sim_config(options_from(SimOptions, args))

    argv = launch.argv()
    for flag, value in zip(SERVE_MTLS[::2], SERVE_MTLS[1::2], strict=True):
        assert argv[argv.index(flag) + 1] == value


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("/tls/tls.crt", None, None, 0), "go together"),
        (("/tls/tls.crt", "/tls/tls.key", None, ssl.CERT_REQUIRED), "needs --ssl-ca-certs"),
    ],
)
def test_incomplete_flags_are_refused(
    flags: tuple[str | None, str | None, str | None, int], problem: str
) -> None:
    with pytest.raises(UsageError, match=problem):
        server_tls(*flags)


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="together"):
        ClientTLS(enabled=True, cert_file="/tls/tls.crt")


def test_a_ca_without_required_client_certificates_is_plain_tls() -> None:
    tls = server_tls("/tls/tls.crt", "/tls/tls.key", "/tls/ca.crt", 0)

    assert tls is not None
    assert tls.uvicorn_options() == {"ssl_certfile": "/tls/tls.crt", "ssl_keyfile": "/tls/tls.key"}
