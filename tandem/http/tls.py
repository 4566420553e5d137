"""TLS, and mutual TLS, on the legs between pods: orchestrator → sidecar (and the pods it
scrapes), sidecar → prefill pod.

A caller (`ClientTLS`) verifies the server against a CA and, for mTLS, presents a certificate
of its own; a server (`ServerTLS`) presents its certificate and, with `client_ca_file`,
refuses callers without one signed by that CA. Certificates are PEM files, on Kubernetes
mounted from a Secret. The same settings map onto vLLM's own flags (`--ssl-certfile`,
`--ssl-keyfile`, `--ssl-ca-certs`, `--ssl-cert-reqs`), so a prefill pod serves TLS itself.
"""

from __future__ import annotations

import ssl
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class ClientTLS(BaseModel):
    """How a hop calls the next one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    ca_file: str | None = None
    """The CA that signed the servers' certificates (default: the system's)."""
    cert_file: str | None = None
    """This caller's certificate, for servers that require one (mTLS)."""
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx's `verify` takes: a context with the CA and the client certificate,
        or True (plain HTTP: never used)."""
        if not self.enabled:
            return True
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class ServerTLS(BaseModel):
    """How a hop serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: str
    key_file: str
    client_ca_file: str | None = None
    """Require callers to present a certificate signed by this CA (mTLS)."""

    def uvicorn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file}
        if self.client_ca_file is not None:
            options |= {"ssl_ca_certs": self.client_ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return options
