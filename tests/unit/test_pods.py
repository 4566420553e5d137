"""Pool definitions: the `vllm serve` command line, env, probes and simulated twin of each pod."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tandem.cluster.topology import POOLS
from tandem.decode import DECODE
from tandem.pods.launch import KVRole, PoolRole, VllmLaunch
from tandem.pods.pool import AGGREGATED, Pool
from tandem.prefill import PREFILL
from tandem.simulator.config import simulated_pod

PROFILE = "llama-3.1-8b-h100-tp1"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass(frozen=True, slots=True)
class PodCase:
    """A pool's vLLM server and what its definition must say."""

    build: Callable[[], VllmLaunch]
    pool_role: PoolRole
    port: int
    kv_role: KVRole | None


CASES = {
    "prefill": PodCase(lambda: PREFILL.pod(PROFILE).vllm, "prefill", 8000, "kv_producer"),
    "decode": PodCase(lambda: DECODE.pod(PROFILE).vllm, "decode", 8200, "kv_consumer"),
    "aggregated": PodCase(lambda: AGGREGATED.pod(PROFILE).vllm, "both", 8000, None),
}


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value after `flag`, or None if the flag is absent."""
    if flag not in argv:
        return None
    return argv[argv.index(flag) + 1]


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> PodCase:
    pod_case: PodCase = CASES[request.param]
    return pod_case


def test_argv_serves_the_model_on_the_role_port(case: PodCase) -> None:
    argv = case.build().argv()

    assert argv[:3] == ["vllm", "serve", MODEL]
    assert flag_value(argv, "--port") == str(case.port)
    assert flag_value(argv, "--served-model-name") == MODEL
    assert flag_value(argv, "--tensor-parallel-size") == "1"
    assert "--enable-prompt-tokens-details" in argv
    assert "--enable-server-load-tracking" in argv
    assert "--enable-prefix-caching" in argv


def test_kv_transfer_config_names_the_nixl_role(case: PodCase) -> None:
    raw = flag_value(case.build().argv(), "--kv-transfer-config")

    if case.kv_role is None:
        assert raw is None
        return
    assert raw is not None
    kv_config = json.loads(raw)
    assert kv_config["kv_connector"] == "NixlConnector"
    assert kv_config["kv_role"] == case.kv_role
    assert kv_config["kv_load_failure_policy"] == "fail"
    assert kv_config["kv_connector_extra_config"]["backends"] == ["UCX"]


def test_env_sets_the_nixl_side_channel_only_with_a_connector(case: PodCase) -> None:
    env = case.build().env()

    if case.kv_role is None:
        assert env == {}
        return
    assert env == {
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "$(POD_IP)",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": "5600",
        "UCX_TLS": "all",
    }


def test_shell_command_is_the_env_then_the_argv(case: PodCase) -> None:
    launch = case.build()
    words = shlex.split(launch.shell_command())

    assignments = [f"{key}={value}" for key, value in launch.env().items()]
    assert words == assignments + launch.argv()


def test_simulated_pod_matches_the_definition(case: PodCase) -> None:
    sim = simulated_pod(case.build(), host="127.0.0.1", time_scale=2.0)

    assert sim.port == case.port
    assert sim.role == case.pool_role
    assert sim.kv_role == case.kv_role
    assert sim.profile == PROFILE
    assert sim.model_name == MODEL
    assert sim.time_scale == 2.0
    # The pod-IP placeholder means "this host" when simulated.
    assert sim.side_channel_host == "127.0.0.1"
    assert sim.side_channel_port == 5600
    assert sim.enable_prompt_tokens_details
    assert sim.enable_server_load_tracking


def test_probes_watch_health_on_the_serving_port(case: PodCase) -> None:
    probes = case.build().probes()

    assert set(probes) == {"startup", "readiness", "liveness"}
    assert {(probe.path, probe.port) for probe in probes.values()} == {("/health", case.port)}


@pytest.mark.parametrize(
    ("build", "port"),
    [
        (lambda: PREFILL.pod(PROFILE, vllm_port=9000, side_channel_port=5700).vllm, 9000),
        (lambda: DECODE.pod(PROFILE, vllm_port=9200, side_channel_port=5700).vllm, 9200),
    ],
    ids=["prefill", "decode"],
)
def test_overridden_ports_reach_argv_env_and_simulation(
    build: Callable[[], VllmLaunch], port: int
) -> None:
    launch = build()

    assert flag_value(launch.argv(), "--port") == str(port)
    assert launch.env()["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5700"
    assert simulated_pod(launch).side_channel_port == 5700
    assert simulated_pod(launch).port == port


def test_decode_sidecar_fronts_vllm() -> None:
    pod = DECODE.pod(PROFILE)

    assert pod.serving_port == 8000
    assert pod.sidecar_argv() == ["tandem", "sidecar", "--port", "8000", "--vllm-port", "8200"]


@pytest.mark.parametrize("pool", [PREFILL, AGGREGATED], ids=["prefill", "aggregated"])
def test_pods_without_a_sidecar_serve_on_vllms_port(pool: Pool) -> None:
    pod = pool.pod(PROFILE)

    assert pod.serving_port == pod.vllm.port == 8000
    assert pod.sidecar_argv() == []


def test_every_pool_by_its_role() -> None:
    assert {role: pool.role for role, pool in POOLS.items()} == {
        "both": "both",
        "prefill": "prefill",
        "decode": "decode",
    }


def test_a_deployments_own_model_is_served_by_its_simulated_twin() -> None:
    launch = dataclasses.replace(PREFILL.pod(PROFILE).vllm, model="acme/llama-ft")

    assert launch.argv()[:3] == ["vllm", "serve", "acme/llama-ft"]
    assert simulated_pod(launch).model_name == "acme/llama-ft"
    assert simulated_pod(PREFILL.pod(PROFILE).vllm).served_model_name is None


def test_served_model_name_reaches_argv_and_simulation() -> None:
    launch = PREFILL.pod(PROFILE, served_model_name="llama").vllm

    assert flag_value(launch.argv(), "--served-model-name") == "llama"
    assert simulated_pod(launch).model_name == "llama"


def test_explicit_side_channel_host_is_kept_in_simulation() -> None:
    launch = VllmLaunch(
        "prefill", PROFILE, MODEL, 1, 8000, "kv_producer", side_channel_host="127.0.0.7"
    )

    assert launch.env()["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.7"
    assert simulated_pod(launch, host="127.0.0.1").side_channel_host == "127.0.0.7"


def test_the_simulated_pod_reads_vllms_side_channel_host_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tandem.cli import build_parser
    from tandem.cli.common import options_from
    from tandem.cli.sim import SimOptions, sim_config

    args = build_parser().parse_args(["sim", "--role", "prefill", "--host", "0.0.0.0"])
    _, without = sim_config(options_from(SimOptions, args))
    monkeypatch.setenv("VLLM_NIXL_SIDE_CHANNEL_HOST", "127.1.2.3")
    _, with_env = sim_config(options_from(SimOptions, args))

    # Without the variable vLLM advertises "localhost" (vllm/envs.py), not the HTTP host.
    assert without.side_channel_host == "localhost"
    assert with_env.side_channel_host == "127.1.2.3"
    assert with_env.host == "0.0.0.0"


def test_print_vllm_command_carries_the_clis_overrides() -> None:
    from tandem.cli import build_parser
    from tandem.cli.common import options_from
    from tandem.cli.sim import SimOptions, sim_config

    args = build_parser().parse_args([
        "sim", "--role", "decode", "--host", "127.0.0.5", "--port", "9300",
        "--side-channel-port", "5777", "--kv-lease-duration", "45",
        "--kv-load-failure-policy", "recompute", "--max-model-len", "2048",
        "--num-gpu-blocks", "512", "--max-num-seqs", "64", "--max-num-batched-tokens", "4096",
        "--enable-request-id-headers",
    ])  # fmt: skip
    launch, config = sim_config(options_from(SimOptions, args))
    argv = launch.argv()
    kv_config = json.loads(flag_value(argv, "--kv-transfer-config") or "{}")

    assert flag_value(argv, "--port") == "9300" == str(config.port)
    assert flag_value(argv, "--host") == "127.0.0.5"
    assert launch.env()["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5777"
    assert kv_config["kv_connector_extra_config"]["kv_lease_duration"] == 45
    assert kv_config["kv_load_failure_policy"] == "recompute"
    assert flag_value(argv, "--max-model-len") == "2048"
    assert flag_value(argv, "--num-gpu-blocks-override") == "512"
    assert flag_value(argv, "--max-num-seqs") == "64"
    assert flag_value(argv, "--max-num-batched-tokens") == "4096"
    assert "--enable-request-id-headers" in argv
    assert config.enable_request_id_headers
