"""What `tandem up` prints: the components, where they listen, and how to call the cluster."""

from __future__ import annotations

from collections.abc import Sequence

from tandem.cluster.local import LocalCluster
from tandem.costmodel.profiles import get_profile

COLUMNS = ("component", "role", "what", "address")


def table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> str:
    """Rows under their column names in a box, each column as wide as its widest cell.

    Each row reads `│ cell │ cell │`, the form scripts that start a cluster and read its
    addresses back match on (e.g. `│ prefill-0 ` then `127.0.0.1:PORT`)."""
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "│ " + " │ ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " │"

    def rule(left: str, middle: str, right: str) -> str:
        return left + middle.join("─" * (width + 2) for width in widths) + right

    return "\n".join(
        [
            rule("┌", "┬", "┐"),
            line(columns),
            rule("├", "┼", "┤"),
            *(line(row) for row in rows),
            rule("└", "┴", "┘"),
        ]
    )


def cluster_summary(cluster: LocalCluster) -> str:
    spec = cluster.spec
    rows = [
        (component.name, component.role or "-", component.kind, f"{spec.host}:{component.port}")
        for component in cluster.all_components()
    ]
    if spec.grpc_port is not None:
        rows.append(
            (
                "orchestrator",
                "-",
                "gRPC: Pick API, ext_proc, health",
                f"{spec.host}:{spec.grpc_port}",
            )
        )
    model = get_profile(spec.profile).model
    if spec.engine == "vllm":
        serving = (
            f"real vLLM (CPU build) serving {spec.model_dir} as {model}, scheduler {spec.scheduler}"
        )
    else:
        serving = (
            f"profile {spec.profile}, scheduler {spec.scheduler}, time scale {spec.time_scale} "
            "(wall seconds per model second)"
        )
    return "\n".join(
        [
            "tandem is up",
            table(rows),
            f"logs and generated config: {cluster.run_dir}/",
            serving,
            "",
            "Try it:",
            f"  curl -s {cluster.url}/v1/completions -H 'content-type: application/json' \\",
            f'    -d \'{{"model": "{model}", "prompt": "Hello", "max_tokens": 16}}\'',
            "",
            '  python -c "from openai import OpenAI; '
            f"c = OpenAI(base_url='{cluster.url}/v1', api_key='-'); "
            f"print(c.chat.completions.create(model='{model}', "
            "messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)\"",
            "",
            "Ctrl-C stops everything.",
        ]
    )


def print_cluster(cluster: LocalCluster) -> None:
    print(cluster_summary(cluster), flush=True)
