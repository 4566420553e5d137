"""tandem's Helm charts, rendered by Helm: valid Kubernetes 1.33 objects that run what the code
defines (the vLLM command line, the sidecar, the orchestrator's configuration)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import helm_python
import kubernetes_validate
import pytest
import yaml

import tandem.orchestrator as orchestrator
from tandem.cli import build_parser
from tandem.cli.common import options_from
from tandem.cli.sim import SimOptions, sim_config
from tandem.costmodel.profiles import PROFILES
from tandem.decode import DECODE
from tandem.http.tls import ServerTLS
from tandem.orchestrator.circuit_breaker import CircuitBreakerConfig
from tandem.orchestrator.config import (
    AdmissionConfig,
    load_orchestrator_config,
    parse_orchestrator_config,
)
from tandem.orchestrator.scheduling.config import build_scheduler
from tandem.pods.launch import Probe, VllmLaunch
from tandem.prefill import PREFILL
from tests.deploy.conftest import (
    CHART_NAMES,
    CHARTS_DIR,
    KUBE_VERSION,
    MODEL,
    NAMESPACE,
    RELEASE,
    REQUIRED,
    SCENARIOS,
    SERVING_NAME,
    Rendered,
    release_values,
)

Role = Literal["prefill", "decode"]
ROLES: tuple[Role, ...] = ("prefill", "decode")
ALL = [(chart, scenario) for scenario in SCENARIOS for chart in CHART_NAMES]
ALL_IDS = [f"{chart}-{scenario}" for chart, scenario in ALL]
REAL = [scenario for scenario in SCENARIOS if scenario != "simulated"]
SHIPPED_SCHEDULER = Path(orchestrator.__file__).parent / "configs" / "tandem.yaml"
POD_READER = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
POD_IP = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
POD_NAME = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
TANDEM_IMAGE = "tandem:0.1.0"


def shared_labels(chart: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": chart,
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/part-of": "tandem",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": f"{chart}-0.1.0",
    }


def serving_labels(role: Role) -> dict[str, str]:
    return {
        "llm-d.ai/inference-serving": "true",
        "llm-d.ai/model": SERVING_NAME,
        "llm-d.ai/role": role,
    }


def launch_from_values(role: Role, values: Mapping[str, Any]) -> VllmLaunch:
    """The pool's vLLM server as the code defines it, built from the chart's values."""
    kv = values["kv"]
    events = values["kvEvents"]
    served = values["servedModelName"] or None
    profile = values["simulatedProfile"]
    base = (
        (PREFILL if role == "prefill" else DECODE)
        .pod(
            profile,
            served_model_name=served,
            side_channel_port=kv["sideChannelPort"],
            kv_load_failure_policy=kv["loadFailurePolicy"],
        )
        .vllm
    )
    return dataclasses.replace(
        base,
        model=values["model"],
        tensor_parallel_size=values["tensorParallelSize"],
        gpu_memory_utilization=values["gpuMemoryUtilization"],
        block_size=values["blockSize"],
        max_model_len=values.get("maxModelLen"),
        max_num_batched_tokens=values.get("maxNumBatchedTokens"),
        kv_lease_duration=kv["leaseDuration"],
        ucx_tls=kv["ucxTls"],
        kv_events_port=events["port"] if events["enabled"] else None,
        kv_events_replay_port=events["replayPort"],
        extra_args=tuple(values["extraArgs"]),
        tls=_served_tls(role, values["tls"]),
        otlp_traces_endpoint=values["tracing"]["otlpTracesEndpoint"] or None,
    )


def _served_tls(role: Role, tls: Mapping[str, Any]) -> ServerTLS | None:
    """A prefill pod's vLLM serves the pool's TLS; a decode pod's sits behind its sidecar."""
    if role != "prefill" or not tls["enabled"]:
        return None
    return ServerTLS(
        cert_file="/etc/tandem-tls/tls.crt",
        key_file="/etc/tandem-tls/tls.key",
        client_ca_file="/etc/tandem-tls/ca.crt" if tls["mutual"] else None,
    )


def probe_spec(probe: Probe) -> dict[str, Any]:
    check: dict[str, Any]
    if probe.path is None:
        check = {"tcpSocket": {"port": probe.port}}
    elif probe.scheme == "HTTPS":
        check = {"httpGet": {"path": probe.path, "port": probe.port, "scheme": "HTTPS"}}
    else:
        check = {"httpGet": {"path": probe.path, "port": probe.port}}
    return {
        **check,
        "initialDelaySeconds": probe.initial_delay_s,
        "periodSeconds": probe.period_s,
        "failureThreshold": probe.failure_threshold,
    }


def gpus(values: Mapping[str, Any]) -> int:
    count: int = values.get("gpusPerPod") or values["tensorParallelSize"]
    return count


# -- every chart, every scenario -----------------------------------------------------------


@pytest.mark.parametrize(("chart", "scenario"), ALL, ids=ALL_IDS)
def test_strict_lint_finds_no_problem(chart: str, scenario: str) -> None:
    report = helm_python.lint(
        CHARTS_DIR / chart,
        release_values(chart, scenario),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )

    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(("chart", "scenario"), ALL, ids=ALL_IDS)
def test_manifests_are_valid_kubernetes_objects(
    rendered: dict[tuple[str, str], Rendered], chart: str, scenario: str
) -> None:
    manifests = rendered[chart, scenario].manifests

    assert manifests
    for doc in manifests:
        if doc["kind"] in ("InferencePool", "ScaledObject"):
            continue  # CRDs kubernetes-validate has no schema for: their fields are checked
            # where they are made (here, and in test_autoscaling_chart.py)
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(("chart", "scenario"), ALL, ids=ALL_IDS)
def test_every_resource_and_pod_carries_the_shared_labels(
    rendered: dict[tuple[str, str], Rendered], chart: str, scenario: str
) -> None:
    r = rendered[chart, scenario]
    expected = shared_labels(chart)

    for doc in r.manifests:
        assert doc["metadata"]["labels"].items() >= expected.items(), doc["kind"]
        assert doc["metadata"]["namespace"] == NAMESPACE
    deployment = r.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pod_labels.items() >= expected.items()
    assert pod_labels.items() >= deployment["spec"]["selector"]["matchLabels"].items()
    assert not any(key.startswith("llm-d.ai/") for key in deployment["metadata"]["labels"])


@pytest.mark.parametrize(("chart", "scenario"), ALL, ids=ALL_IDS)
def test_notes_render(rendered: dict[tuple[str, str], Rendered], chart: str, scenario: str) -> None:
    notes = rendered[chart, scenario].notes

    assert f"namespace {NAMESPACE}" in notes
    assert SERVING_NAME in notes
    assert "<no value>" not in notes


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_chart_metadata(charts: dict[str, helm_python.Chart], chart: str) -> None:
    metadata = charts[chart].metadata

    assert metadata["apiVersion"] == "v2"
    assert metadata["name"] == chart
    assert metadata["version"] == "0.1.0"
    assert metadata["appVersion"] == "0.1.0"
    assert metadata["kubeVersion"] == ">=1.33.0-0"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replicas_follow_the_values(
    rendered: dict[tuple[str, str], Rendered], scenario: str
) -> None:
    defaults = {"tandem-prefill": 2, "tandem-decode": 2, "tandem-orchestrator": 1}
    for chart in CHART_NAMES:
        values = SCENARIOS[scenario].get(chart, {})
        given = values.get("replicas", defaults[chart])
        if values.get("autoscaling", {}).get("enabled"):
            given = None  # the autoscaler's to set
        assert rendered[chart, scenario].one("Deployment")["spec"].get("replicas") == given


def test_pd_ratio_example_sets_three_prefill_and_five_decode_pods(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    assert rendered["tandem-prefill", "pd-ratio"].one("Deployment")["spec"]["replicas"] == 3
    assert rendered["tandem-decode", "pd-ratio"].one("Deployment")["spec"]["replicas"] == 5


# -- prefill and decode pools --------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("role", ROLES)
def test_serving_pods_carry_the_llm_d_labels(
    rendered: dict[tuple[str, str], Rendered], role: Role, scenario: str
) -> None:
    pod = rendered[f"tandem-{role}", scenario].one("Deployment")["spec"]["template"]

    assert pod["metadata"]["labels"].items() >= serving_labels(role).items()


@pytest.mark.parametrize("scenario", REAL)
@pytest.mark.parametrize("role", ROLES)
def test_vllm_container_runs_the_launch_definition(
    rendered: dict[tuple[str, str], Rendered], role: Role, scenario: str
) -> None:
    r = rendered[f"tandem-{role}", scenario]
    launch = launch_from_values(role, r.values)
    vllm = r.container("vllm")

    assert vllm["image"] == f"vllm/vllm-openai:{r.values['vllmImage']['tag']}"
    assert vllm["command"] == ["vllm", "serve"]
    assert vllm["args"] == launch.argv()[2:]
    env = [{"name": name, "value": value} for name, value in launch.env().items()]
    assert vllm["env"] == [POD_IP, *env, *r.values["extraEnv"]]
    assert {kind: vllm[f"{kind}Probe"] for kind in launch.probes()} == {
        kind: probe_spec(probe) for kind, probe in launch.probes().items()
    }


def test_tp4_example_serves_the_given_model_on_four_gpus(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    args = rendered["tandem-prefill", "tp4"].container("vllm")["args"]

    assert args[0] == "meta-llama/Llama-3.1-70B-Instruct"
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--served-model-name") + 1] == "llama-70b"
    assert args[args.index("--max-model-len") + 1] == "32768"
    assert args[-2:] == ["--max-num-seqs", "256"]
    kv_config = json.loads(args[args.index("--kv-transfer-config") + 1])
    assert kv_config["kv_role"] == "kv_producer"
    assert kv_config["kv_load_failure_policy"] == "recompute"


@pytest.mark.parametrize("scenario", REAL)
@pytest.mark.parametrize("role", ROLES)
def test_vllm_container_gets_the_gpus_shm_and_h100_nodes(
    rendered: dict[tuple[str, str], Rendered], role: Role, scenario: str
) -> None:
    r = rendered[f"tandem-{role}", scenario]
    resources = r.container("vllm")["resources"]
    user = r.values.get("resources", {})

    count = gpus(r.values)
    assert count == (4 if scenario == "tp4" else 1)
    assert resources["requests"] == {"nvidia.com/gpu": count, **user.get("requests", {})}
    assert resources["limits"] == {"nvidia.com/gpu": count, **user.get("limits", {})}
    assert r.container("vllm")["volumeMounts"][0] == {"name": "shm", "mountPath": "/dev/shm"}
    assert r.pod_spec["volumes"][0] == {
        "name": "shm",
        "emptyDir": {"medium": "Memory", "sizeLimit": r.values["shm"]["sizeLimit"]},
    }
    served_tls = role == "prefill" and r.values["tls"]["enabled"]
    assert len(r.container("vllm")["volumeMounts"]) == (2 if served_tls else 1)
    assert r.pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert r.pod_spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


@pytest.mark.parametrize("role", ROLES)
def test_gpus_per_pod_below_the_tensor_parallel_size_is_refused(
    charts: dict[str, helm_python.Chart], role: Role
) -> None:
    chart = f"tandem-{role}"
    values = {**REQUIRED[chart], "tensorParallelSize": 4, "gpusPerPod": 2}

    with pytest.raises(helm_python.HelmError, match=re.escape("gpusPerPod (2) must be at least")):
        charts[chart].render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_prefill_pod_ports(rendered: dict[tuple[str, str], Rendered], scenario: str) -> None:
    r = rendered["tandem-prefill", scenario]

    assert r.container("vllm")["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "nixl", "containerPort": 5600, "protocol": "TCP"},
        {"name": "kv-events", "containerPort": 5557, "protocol": "TCP"},
        {"name": "kv-replay", "containerPort": 5558, "protocol": "TCP"},
    ]
    assert "initContainers" not in r.pod_spec
    assert r.pod_spec["automountServiceAccountToken"] is False
    assert not r.kinds("Role")
    assert not r.kinds("ServiceAccount")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_decode_pod_ports(rendered: dict[tuple[str, str], Rendered], scenario: str) -> None:
    r = rendered["tandem-decode", scenario]

    assert r.container("sidecar", init=True)["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    ]
    assert r.container("vllm")["ports"] == [
        {"name": "vllm-http", "containerPort": 8200, "protocol": "TCP"},
        {"name": "nixl", "containerPort": 5600, "protocol": "TCP"},
        {"name": "kv-events", "containerPort": 5557, "protocol": "TCP"},
        {"name": "kv-replay", "containerPort": 5558, "protocol": "TCP"},
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_decode_sidecar_is_a_native_sidecar_that_finds_the_prefill_pods(
    rendered: dict[tuple[str, str], Rendered], scenario: str
) -> None:
    r = rendered["tandem-decode", scenario]
    sidecar = r.container("sidecar", init=True)

    assert [c["name"] for c in r.pod_spec["initContainers"]] == ["sidecar"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == TANDEM_IMAGE
    assert sidecar["command"] == ["tandem", "sidecar"]
    assert sidecar["args"][:12] == [
        "--host", "0.0.0.0",
        "--port", "8000",
        "--vllm-port", "8200",
        "--prefill-selector",
        f"llm-d.ai/inference-serving=true,llm-d.ai/model={SERVING_NAME},llm-d.ai/role=prefill",
        "--prefill-port", "8000",
        "--namespace", NAMESPACE,
    ]  # fmt: skip
    tls = r.values["tls"]["enabled"]
    assert len(sidecar["args"]) == (26 if tls else 12)  # TLS: tests/deploy/test_tls_chart.py
    if not tls:
        assert sidecar["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    # A startup probe would hold vLLM's start: the sidecar's /health is vLLM's.
    assert "startupProbe" not in sidecar
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["runAsUser"] == 10001
    assert r.pod_spec["serviceAccountName"] == f"{RELEASE}-decode"


def test_sidecar_arguments_are_accepted_by_tandem_sidecar(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    sidecar = rendered["tandem-decode", "defaults"].container("sidecar", init=True)

    args = build_parser().parse_args([*sidecar["command"][1:], *sidecar["args"]])

    assert (args.host, args.port, args.vllm_port) == ("0.0.0.0", 8000, 8200)
    assert args.prefill_selector == (
        f"llm-d.ai/inference-serving=true,llm-d.ai/model={SERVING_NAME},llm-d.ai/role=prefill"
    )
    assert (args.prefill_port, args.namespace) == (8000, NAMESPACE)


@pytest.mark.parametrize("role", ROLES)
def test_simulated_mode_runs_tandem_sim_without_gpus(
    rendered: dict[tuple[str, str], Rendered], role: Role
) -> None:
    r = rendered[f"tandem-{role}", "simulated"]
    sim = r.container("vllm")
    port = 8000 if role == "prefill" else 8200

    assert sim["image"] == TANDEM_IMAGE
    assert sim["command"] == ["tandem", "sim"]
    assert sim["args"] == [
        "--role", role,
        "--profile", "qwen3-32b-h100-tp2",
        "--host", "0.0.0.0",
        "--port", str(port),
        "--side-channel-port", "5600",
        "--served-model-name", MODEL,
        "--engine-id", "$(POD_NAME)",
        "--kv-lease-duration", "30",
        "--kv-load-failure-policy", "fail",
        "--kv-events-config", launch_from_values(role, r.values).kv_events_argument(),
        *(["--max-num-batched-tokens", "2048"] if role == "decode" else []),
    ]  # fmt: skip
    assert sim["env"] == [
        POD_NAME,
        POD_IP,
        {"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", "value": "$(POD_IP)"},
    ]
    assert {kind: sim[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")} == {
        kind: probe_spec(probe)
        for kind, probe in launch_from_values(role, r.values).probes().items()
    }
    assert "nvidia.com/gpu" not in json.dumps(r.manifests)
    for key in ("nodeSelector", "tolerations", "volumes"):
        assert key not in r.pod_spec


@pytest.mark.parametrize("role", ROLES)
def test_simulated_pod_arguments_are_accepted_by_tandem_sim(
    rendered: dict[tuple[str, str], Rendered], role: Role
) -> None:
    sim = rendered[f"tandem-{role}", "simulated"].container("vllm")

    args = build_parser().parse_args([*sim["command"][1:], *sim["args"]])
    _, config = sim_config(options_from(SimOptions, args))

    assert config.role == role
    assert config.profile == "qwen3-32b-h100-tp2"
    assert config.port == (8000 if role == "prefill" else 8200)
    assert config.side_channel_port == 5600
    assert config.model_name == MODEL
    assert config.engine_id == "$(POD_NAME)"
    assert config.kv_role == ("kv_producer" if role == "prefill" else "kv_consumer")


def test_simulated_profiles_are_the_simulator_profiles(
    charts: dict[str, helm_python.Chart],
) -> None:
    for role in ROLES:
        schema = charts[f"tandem-{role}"].schema
        assert schema is not None
        assert sorted(schema["properties"]["simulatedProfile"]["enum"]) == sorted(PROFILES)
        assert charts[f"tandem-{role}"].values["simulatedProfile"] in PROFILES


# -- RBAC ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chart", ["tandem-decode", "tandem-orchestrator"])
def test_rbac_only_reads_pods_in_the_namespace(
    rendered: dict[tuple[str, str], Rendered], chart: str
) -> None:
    r = rendered[chart, "defaults"]
    role, binding = r.one("Role"), r.one("RoleBinding")
    account = r.one("ServiceAccount")["metadata"]["name"]

    assert role["rules"] == POD_READER
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert r.pod_spec["serviceAccountName"] == account


@pytest.mark.parametrize("chart", ["tandem-decode", "tandem-orchestrator"])
def test_an_existing_service_account_and_no_pdb(
    charts: dict[str, helm_python.Chart], chart: str
) -> None:
    values = {
        **REQUIRED[chart],
        "serviceAccount": {"create": False, "name": "existing"},
        "pdb": {"enabled": False},
    }
    files = charts[chart].render(values, name=RELEASE, namespace=NAMESPACE)
    r = Rendered(chart, "existing-account", values, {k: v for k, v in files.items() if v})

    assert not r.kinds("ServiceAccount")
    assert not r.kinds("PodDisruptionBudget")
    assert r.pod_spec["serviceAccountName"] == "existing"
    assert r.one("RoleBinding")["subjects"][0]["name"] == "existing"


@pytest.mark.parametrize(("chart", "scenario"), ALL, ids=ALL_IDS)
def test_no_cluster_wide_permissions(
    rendered: dict[tuple[str, str], Rendered], chart: str, scenario: str
) -> None:
    kinds = {doc["kind"] for doc in rendered[chart, scenario].manifests}

    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


# -- orchestrator --------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["defaults", "pd-ratio"])
def test_orchestrator_config_parses_and_discovers_the_model_pods(
    rendered: dict[tuple[str, str], Rendered], scenario: str
) -> None:
    data = rendered["tandem-orchestrator", scenario].configuration()["data"]

    config = parse_orchestrator_config(yaml.safe_load(data["orchestrator.yaml"]))

    assert config.model == (MODEL if scenario == "pd-ratio" else None)
    assert config.scheduler == "scheduler.yaml"
    assert config.endpoints == ()
    assert config.kubernetes is not None
    assert config.kubernetes.namespace == NAMESPACE
    assert config.kubernetes.selector == (
        f"llm-d.ai/inference-serving=true,llm-d.ai/model={SERVING_NAME}"
    )
    assert config.kubernetes.port == 8000
    assert config.reload.interval_s == 5
    assert (config.scrape.interval_s, config.scrape.staleness_s) == (0.5, 2.0)
    assert (config.gateway.host, config.gateway.port) == ("0.0.0.0", 8000)
    assert config.gateway.max_in_flight_per_endpoint == 1024
    assert config.circuit_breaker == CircuitBreakerConfig()
    assert config.admission == AdmissionConfig()
    assert (config.grpc.enabled, config.grpc.host, config.grpc.port) == (True, "0.0.0.0", 9002)


def test_orchestrator_loads_its_scheduler_from_the_mounted_files(
    rendered: dict[tuple[str, str], Rendered], tmp_path: Path
) -> None:
    data = rendered["tandem-orchestrator", "defaults"].configuration()["data"]
    for name, text in data.items():
        (tmp_path / name).write_text(text)

    config = load_orchestrator_config(tmp_path / "orchestrator.yaml")
    scheduler = config.scheduler_config(tmp_path)

    assert build_scheduler(scheduler) is not None


def test_scheduler_config_is_the_shipped_tandem_yaml(
    charts: dict[str, helm_python.Chart], rendered: dict[tuple[str, str], Rendered]
) -> None:
    shipped = yaml.safe_load(SHIPPED_SCHEDULER.read_text())
    data = rendered["tandem-orchestrator", "defaults"].configuration()["data"]

    assert charts["tandem-orchestrator"].values["scheduler"]["config"] == shipped
    assert yaml.safe_load(data["scheduler.yaml"]) == shipped


def test_orchestrator_deployment_mounts_the_config_and_probes_ready(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered["tandem-orchestrator", "defaults"]
    pod = r.one("Deployment")["spec"]["template"]
    container = r.container("orchestrator")
    configmap = r.configuration()["metadata"]["name"]

    assert container["image"] == TANDEM_IMAGE
    assert container["command"] == ["tandem", "orchestrator"]
    assert container["args"][:2] == ["--config", "/etc/tandem/orchestrator.yaml"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 9002, "protocol": "TCP"},
    ]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    # The whole ConfigMap as a directory: a subPath mount would never see updates.
    assert container["volumeMounts"] == [
        {"name": "config", "mountPath": "/etc/tandem", "readOnly": True}
    ]
    assert r.pod_spec["volumes"] == [{"name": "config", "configMap": {"name": configmap}}]
    # Configuration changes are reloaded in place: no checksum annotation to restart pods.
    annotations = pod["metadata"].get("annotations") or {}
    assert not any(key.startswith("checksum/") for key in annotations)
    assert r.pod_spec["securityContext"]["runAsUser"] == 10001


def test_orchestrator_service_exposes_the_gateway_and_grpc(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    r = rendered["tandem-orchestrator", "defaults"]
    service = r.one("Service")
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 9002, "targetPort": "grpc", "protocol": "TCP"},
    ]
    assert pod_labels.items() >= service["spec"]["selector"].items()
    assert r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_orchestrator_notes_say_how_to_reach_the_endpoint(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    notes = rendered["tandem-orchestrator", "defaults"].notes
    name = f"{RELEASE}-orchestrator"

    assert f"kubectl -n {NAMESPACE} port-forward svc/{name} 8000:8000" in notes
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in notes
    assert f"http://{name}.{NAMESPACE}.svc:8000/v1" in notes
    assert f"{name}.{NAMESPACE}.svc:9002" in notes


def test_grpc_port_value_moves_the_server_the_container_and_the_service_port(
    charts: dict[str, helm_python.Chart],
) -> None:
    values = {**REQUIRED["tandem-orchestrator"], "grpc": {"port": 9100}}
    files = charts["tandem-orchestrator"].render(values, name=RELEASE, namespace=NAMESPACE)
    r = Rendered("tandem-orchestrator", "grpc-port", values, {k: v for k, v in files.items() if v})

    config = parse_orchestrator_config(
        yaml.safe_load(r.configuration()["data"]["orchestrator.yaml"])
    )

    assert (config.grpc.enabled, config.grpc.port) == (True, 9100)
    assert {"name": "grpc", "containerPort": 9100, "protocol": "TCP"} in r.container(
        "orchestrator"
    )["ports"]
    assert {"name": "grpc", "port": 9100, "targetPort": "grpc", "protocol": "TCP"} in r.one(
        "Service"
    )["spec"]["ports"]


def test_inference_pool_selects_the_decode_sidecars(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    pool = rendered["tandem-orchestrator", "inference-pool"].one("InferencePool")
    decode = rendered["tandem-decode", "defaults"]
    decode_labels = decode.one("Deployment")["spec"]["template"]["metadata"]["labels"]

    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["name"] == f"{RELEASE}-orchestrator"
    assert pool["spec"] == {
        "selector": {"matchLabels": serving_labels("decode")},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {
            "kind": "Service",
            "name": f"{RELEASE}-orchestrator",  # this orchestrator's ext_proc picker
            "port": {"number": 9002},
            "failureMode": "FailClose",
        },
    }
    orchestrator = rendered["tandem-orchestrator", "inference-pool"]
    assert orchestrator.one("Service")["metadata"]["name"] == f"{RELEASE}-orchestrator"
    assert {"name": "grpc", "port": 9002, "targetPort": "grpc", "protocol": "TCP"} in (
        orchestrator.one("Service")["spec"]["ports"]
    )
    assert decode_labels.items() >= pool["spec"]["selector"]["matchLabels"].items()
    assert decode.container("sidecar", init=True)["ports"][0]["containerPort"] == 8000


def test_inference_pool_can_name_another_picker(
    rendered: dict[tuple[str, str], Rendered],
) -> None:
    pool = rendered["tandem-orchestrator", "inference-pool-elsewhere"].one("InferencePool")
    assert pool["spec"]["endpointPickerRef"]["name"] == "tandem-epp"
    assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9100}  # grpc.port


def test_inference_pool_is_off_by_default(rendered: dict[tuple[str, str], Rendered]) -> None:
    assert not rendered["tandem-orchestrator", "defaults"].kinds("InferencePool")


# -- values the schema refuses -------------------------------------------------------------

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    *[
        (chart, {"replicaCount": 2}, "additional properties 'replicaCount'")
        for chart in CHART_NAMES
    ],
    *[(chart, {"replicas": -1}, "/replicas") for chart in CHART_NAMES],
    *[(chart, {"servingName": "Bad_Name"}, "/servingName") for chart in CHART_NAMES],
    *[(chart, {"servingName": ""}, "/servingName") for chart in CHART_NAMES],
    *[(f"tandem-{role}", {"gpusPerPod": 0}, "/gpusPerPod") for role in ROLES],
    *[(f"tandem-{role}", {"simulatedProfile": "nope"}, "/simulatedProfile") for role in ROLES],
    *[(f"tandem-{role}", {"model": ""}, "/model") for role in ROLES],
    *[(f"tandem-{role}", {"kv": {"leaseDurtion": 5}}, "'leaseDurtion'") for role in ROLES],
    ("tandem-decode", {"sidecar": {"image": "x"}}, "'image'"),
    *[(f"tandem-{role}", {"tls": {"enabled": True}}, "/tls/secretName") for role in ROLES],
    ("tandem-orchestrator", {"upstreamTls": {"enabled": True}}, "/upstreamTls/secretName"),
    ("tandem-orchestrator", {"service": {"type": "Ingress"}}, "/service/type"),
    ("tandem-orchestrator", {"grpc": {"port": 0}}, "/grpc/port"),
    ("tandem-orchestrator", {"grpc": {"enabled": False}}, "additional properties 'enabled'"),
    (
        "tandem-orchestrator",
        {"inferencePool": {"enabled": True, "endpointPicker": {"port": -1}}},
        "/endpointPicker/port",
    ),
]


@pytest.mark.parametrize(
    ("chart", "bad", "key"),
    BAD_VALUES,
    ids=[f"{chart}-{next(iter(bad))}-{i}" for i, (chart, bad, _) in enumerate(BAD_VALUES)],
)
def test_schema_refuses_bad_values_naming_the_key(
    charts: dict[str, helm_python.Chart], chart: str, bad: dict[str, Any], key: str
) -> None:
    values = {**REQUIRED[chart], **bad}

    with pytest.raises(helm_python.HelmValuesError, match=re.escape(key)):
        charts[chart].validate_schema(values)
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(key)):
        charts[chart].render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_chart_defaults_alone_are_refused_for_want_of_a_serving_name(
    charts: dict[str, helm_python.Chart], chart: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="/servingName"):
        charts[chart].validate_schema({})
