"""The local launcher's plan: which processes `tandem up` starts, with which command lines,
for simulated pods and for real vLLM pods (no engine needed to plan them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.cli import build_parser
from tandem.cli.common import options_from
from tandem.cli.up import UpOptions
from tandem.cluster import real_engine, tiny_model
from tandem.cluster.topology import ClusterSpec, Component, plan_cluster
from tandem.errors import EngineMissingError, UsageError
from tandem.kvcache.tokenizer import SYNTHETIC_WORDS
from tandem.orchestrator.config import parse_orchestrator_config

MODEL_DIR = Path("/models/tiny")


def real_plan(**fields: object) -> list[Component]:
    spec = ClusterSpec(engine="vllm", model_dir=MODEL_DIR, **fields)  # type: ignore[arg-type]
    return plan_cluster(spec).components


def flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_real_pods_run_vllms_cpu_build_with_the_pool_definitions_roles() -> None:
    prefill, decode, sidecar = real_plan(prefill=1, decode=1)

    for pod, role in ((prefill, "kv_producer"), (decode, "kv_consumer")):
        argv = pod.argv
        assert argv[:4] == (sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model")
        assert flag(argv, "--model") == str(MODEL_DIR)
        assert flag(argv, "--served-model-name") == "meta-llama/Llama-3.1-8B-Instruct"
        assert flag(argv, "--dtype") == "float32"
        assert flag(argv, "--block-size") == str(real_engine.CPU_BLOCK_SIZE)
        assert flag(argv, "--port") == str(pod.port)
        assert "--enforce-eager" in argv
        assert "--enable-prefix-caching" in argv
        kv_config = json.loads(flag(argv, "--kv-transfer-config"))
        assert kv_config["kv_connector"] == "NixlConnector"
        assert kv_config["kv_role"] == role
        assert kv_config["kv_buffer_device"] == "cpu"
        env = dict(pod.env)
        assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "127.0.0.1"
        assert env["VLLM_CPU_KVCACHE_SPACE"] == str(real_engine.KV_CACHE_SPACE_GIB)
        assert env["HF_HUB_OFFLINE"] == "1"
        assert pod.startup_timeout_s == real_engine.STARTUP_TIMEOUT_S
    side_channels = {dict(p.env)["VLLM_NIXL_SIDE_CHANNEL_PORT"] for p in (prefill, decode)}
    assert len(side_channels) == 2
    assert sidecar.kind == "sidecar"
    assert flag(sidecar.argv, "--vllm-port") == str(decode.port)
    assert flag(sidecar.argv, "--prefill-endpoints") == f"127.0.0.1:{prefill.port}"


def test_real_aggregated_pods_have_no_connector() -> None:
    [pod] = real_plan(prefill=0, decode=0, aggregated=1)
    assert "--kv-transfer-config" not in pod.argv
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in dict(pod.env)
    assert dict(pod.env)["OMP_NUM_THREADS"] == "1"


def test_pod_arguments_reach_real_pods() -> None:
    [pod] = real_plan(aggregated=1, prefill=0, decode=0, pod_args=("--max-num-seqs", "4"))
    assert flag(pod.argv, "--max-num-seqs") == "4"


def test_simulated_pods_are_unchanged_by_the_engine_option() -> None:
    for component in plan_cluster(ClusterSpec()).components:
        assert component.argv[1:3] == ("-m", "tandem")
        assert component.env == ()


def test_a_real_plan_needs_a_model_folder() -> None:
    with pytest.raises(ValueError, match="model folder"):
        plan_cluster(ClusterSpec(engine="vllm"))


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown engine 'tgi'"):
        ClusterSpec(engine="tgi")  # type: ignore[arg-type]


def test_a_missing_engine_names_the_install_command(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'vllm'\" >&2\nexit 1\n"
    )
    python.chmod(0o755)
    with pytest.raises(EngineMissingError) as raised:
        real_engine.check_engine(str(python))
    message = str(raised.value)
    assert real_engine.INSTALL_COMMAND in message
    assert "No module named 'vllm'" in message


def test_tandem_up_without_the_engine_exits_with_the_install_command(tmp_path: Path) -> None:
    if real_engine_importable():
        pytest.skip("this Python has the real engine")
    result = subprocess.run(
        [sys.executable, "-m", "tandem", "up", "--engine", "vllm", "--run-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert real_engine.INSTALL_COMMAND in result.stderr
    assert "Traceback" not in result.stderr


def real_engine_importable() -> bool:
    try:
        real_engine.check_engine()
    except EngineMissingError:
        return False
    return True


def test_the_tiny_vocabulary_holds_every_synthetic_word_once() -> None:
    words = tiny_model.vocabulary()
    assert len(words) == len(set(words))
    assert words[: len(tiny_model.SPECIAL_TOKENS)] == list(tiny_model.SPECIAL_TOKENS)
    assert set(SYNTHETIC_WORDS) <= set(words)
    assert {"<|", "|>", "user", "assistant", "hello"} <= set(words)


def test_the_model_cache_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_CACHE_DIR", "/cache/here")
    assert tiny_model.model_dir() == Path("/cache/here/models/tandem-tiny-llama-v1")
    monkeypatch.delenv("TANDEM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert tiny_model.default_cache_dir() == Path("/xdg/tandem")


@pytest.mark.parametrize(("model_wait_s", "wall_wait_s"), [(None, 20.0), (0.4, 4.0)])
def test_the_admission_wait_is_set_in_model_time(
    model_wait_s: float | None, wall_wait_s: float
) -> None:
    spec = ClusterSpec(time_scale=10.0, admission_max_wait_s=model_wait_s)
    config = plan_cluster(spec).orchestrator_config
    assert config["admission"] == {"max_wait_s": pytest.approx(wall_wait_s)}


def test_sidecar_arguments_reach_every_sidecar() -> None:
    spec = ClusterSpec(decode=2, sidecar_args=("--prefill-timeout", "5"))
    sidecars = [c for c in plan_cluster(spec).components if c.kind == "sidecar"]
    assert len(sidecars) == 2
    assert all(flag(c.argv, "--prefill-timeout") == "5" for c in sidecars)


def test_grpc_is_served_only_when_a_port_is_given() -> None:
    plain = plan_cluster(ClusterSpec()).orchestrator_config
    with_grpc = plan_cluster(ClusterSpec(host="127.0.0.1", grpc_port=9510)).orchestrator_config

    assert parse_orchestrator_config(plain).grpc.enabled is False
    grpc = parse_orchestrator_config(with_grpc).grpc
    assert (grpc.enabled, grpc.host, grpc.port) == (True, "127.0.0.1", 9510)


def test_tandem_up_takes_a_grpc_port() -> None:
    args = build_parser().parse_args(["up", "--grpc-port", "9511"])

    assert options_from(UpOptions, args).grpc_port == 9511


def test_simulated_pods_are_sized_by_their_profile_in_their_time() -> None:
    spec = ClusterSpec(profile="qwen3-32b-h100-tp2", time_scale=4.0)
    scaling = parse_orchestrator_config(plan_cluster(spec).orchestrator_config).scaling
    assert scaling is not None
    assert (scaling.profile, scaling.time_scale) == ("qwen3-32b-h100-tp2", 4.0)
    assert (scaling.ttft_s, scaling.itl_s) == pytest.approx((2.0, 0.2))
    real = plan_cluster(ClusterSpec(engine="vllm", model_dir=Path("model"))).orchestrator_config
    assert "scaling" not in real  # the CPU engine runs no profile


def test_pods_that_move_keep_a_slot_of_two_ports_each_and_every_sidecar_allows_every_slot() -> None:
    from tandem.cluster.topology import place_in_slot

    spec = ClusterSpec(
        prefill=2, decode=1, base_port=9000, rebalance={"prefill": {"max": 2}, "decode": {"max": 2}}
    )
    plan = plan_cluster(spec)

    ports = {c.name: c.port for c in plan.components}
    assert ports == {"prefill-0": 9000, "prefill-1": 9002, "decode-0-vllm": 9004, "decode-0": 9005}
    assert plan.slots == {"prefill-0": 0, "prefill-1": 1, "decode-0": 2}
    [sidecar] = [c for c in plan.components if c.kind == "sidecar"]
    allowed = sidecar.argv[sidecar.argv.index("--prefill-endpoints") + 1]
    assert allowed == "127.0.0.1:9000,127.0.0.1:9002,127.0.0.1:9004"
    config = parse_orchestrator_config(plan.orchestrator_config)
    assert config.rebalance is not None
    assert config.scaling is not None
    # prefill-1's slot, restarted as a decode pod: the same vLLM port, its sidecar next to it.
    moved = place_in_slot(spec, 1, "decode", 1)
    assert [(c.name, c.port) for c in moved.components] == [
        ("decode-1-vllm", 9002),
        ("decode-1", 9003),
    ]
    assert moved.endpoint["port"] == 9003


def test_tandem_up_rebalance_lets_each_pool_keep_one_pod() -> None:
    from tandem.cli.up import rebalance_section

    section = rebalance_section(prefill=2, decode=3)

    assert section == {"prefill": {"min": 1, "max": 4}, "decode": {"min": 1, "max": 4}}
    with pytest.raises(UsageError, match="give each at least one pod"):
        rebalance_section(prefill=0, decode=2)
