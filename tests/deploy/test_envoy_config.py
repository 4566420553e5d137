"""deploy/envoy/envoy.yaml, read with Envoy's own protos: every field is one Envoy knows, and
the ext_proc filter, the endpoint picker's cluster and the pods' ORIGINAL_DST cluster fit
together the way tandem's picker expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2, processing_mode_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from tandem.orchestrator.ext_proc import DESTINATION_HEADER, PROCESSING_MODE

ROOT = Path(__file__).resolve().parents[2]
ENVOY_YAML = ROOT / "deploy" / "envoy" / "envoy.yaml"
PICKER_PORT = 9002
"""The orchestrator's gRPC port, as the Helm chart's InferencePool names it."""

# Imported for their message types: json_format resolves each "@type" through them.
TYPED_CONFIGS = (hcm_pb2, router_pb2, ext_proc_pb2, http_protocol_options_pb2)
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@pytest.fixture(scope="module")
def bootstrap() -> Any:
    """The file as an Envoy Bootstrap; parsing fails on any unknown field or wrong type."""
    document = yaml.safe_load(ENVOY_YAML.read_text())
    return json_format.ParseDict(document, bootstrap_pb2.Bootstrap())


def connection_manager(bootstrap: Any) -> Any:
    (listener,) = bootstrap.static_resources.listeners
    (chain,) = listener.filter_chains
    (network_filter,) = chain.filters
    manager = hcm_pb2.HttpConnectionManager()
    assert network_filter.typed_config.Unpack(manager)
    return manager


def ext_proc_filter(bootstrap: Any) -> Any:
    manager = connection_manager(bootstrap)
    (config,) = [f for f in manager.http_filters if f.name == "envoy.filters.http.ext_proc"]
    ext_proc = ext_proc_pb2.ExternalProcessor()
    assert config.typed_config.Unpack(ext_proc)
    return ext_proc


def cluster(bootstrap: Any, name: str) -> Any:
    found = [c for c in bootstrap.static_resources.clusters if c.name == name]
    assert len(found) == 1, f"no cluster named {name!r}"
    return found[0]


def test_listens_on_8080_with_ext_proc_before_the_router(bootstrap: Any) -> None:
    (listener,) = bootstrap.static_resources.listeners
    names = [f.name for f in connection_manager(bootstrap).http_filters]

    assert listener.address.socket_address.port_value == 8080
    assert names == ["envoy.filters.http.ext_proc", "envoy.filters.http.router"]


def test_processing_mode_is_the_one_the_picker_serves(bootstrap: Any) -> None:
    ext_proc = ext_proc_filter(bootstrap)
    mode = ext_proc.processing_mode
    names = {
        field: (
            processing_mode_pb2.ProcessingMode.BodySendMode.Name(getattr(mode, field))
            if field.endswith("body_mode")
            else processing_mode_pb2.ProcessingMode.HeaderSendMode.Name(getattr(mode, field))
        )
        for field in PROCESSING_MODE
    }

    assert names == dict(PROCESSING_MODE)
    assert not ext_proc.allow_mode_override
    assert not ext_proc.failure_mode_allow
    assert ext_proc.message_timeout.ToMilliseconds() >= 1000  # Envoy's 200 ms default is short


def test_the_picker_cluster_speaks_http2_to_the_orchestrators_grpc_port(
    bootstrap: Any,
) -> None:
    ext_proc = ext_proc_filter(bootstrap)
    picker = cluster(bootstrap, ext_proc.grpc_service.envoy_grpc.cluster_name)
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert picker.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    (locality,) = picker.load_assignment.endpoints
    ports = {e.endpoint.address.socket_address.port_value for e in locality.lb_endpoints}

    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert ports == {PICKER_PORT}


def test_routes_go_to_an_original_dst_cluster_reading_the_picker_header(bootstrap: Any) -> None:
    (host,) = connection_manager(bootstrap).route_config.virtual_hosts
    targets = {route.route.cluster for route in host.routes}
    (pods,) = [cluster(bootstrap, name) for name in targets]

    assert pods.type == pods.ORIGINAL_DST
    assert pods.lb_policy == pods.CLUSTER_PROVIDED
    assert pods.original_dst_lb_config.use_http_header
    assert pods.original_dst_lb_config.http_header_name == DESTINATION_HEADER
    # Streams last as long as the generation: no overall limit on the response.
    assert all(route.route.timeout.ToSeconds() == 0 for route in host.routes)
    assert all(route.route.HasField("timeout") for route in host.routes)
