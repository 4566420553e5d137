"""What `tandem up` prints: the components, where they listen, and how to call the cluster."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cluster.local import LocalCluster
from costmodel.profiles import get_profile


def print_cluster(cluster: LocalCluster) -> None:
    console = Console()
    spec = cluster.spec
    table = Table(title="tandem is up", title_justify="left")
    for column in ("component", "role", "what", "address"):
        table.add_column(column, no_wrap=True)
    for component in cluster.all_components():
        table.add_row(
            component.name, component.role or "-", component.kind, f"{spec.host}:{component.port}"
        )
    if spec.grpc_port is not None:
        table.add_row(
            "orchestrator", "-", "gRPC: Pick API, ext_proc, health", f"{spec.host}:{spec.grpc_port}"
        )
    console.print(table)
    console.print(f"logs and generated config: {cluster.run_dir}/", soft_wrap=True)
    model = get_profile(spec.profile).model
    if spec.engine == "vllm":
        console.print(
            f"real vLLM (CPU build) serving {spec.model_dir} as {model}, "
            f"scheduler {spec.scheduler}\n",
            soft_wrap=True,
        )
    else:
        console.print(
            f"profile {spec.profile}, scheduler {spec.scheduler}, time scale {spec.time_scale} "
            "(wall seconds per model second)\n",
            soft_wrap=True,
        )
    console.print("Try it:", style="bold")
    console.print(
        f"  curl -s {cluster.url}/v1/completions -H 'content-type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "prompt": "Hello", "max_tokens": 16}}\'\n',
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        '  python -c "from openai import OpenAI; '
        f"c = OpenAI(base_url='{cluster.url}/v1', api_key='-'); "
        f"print(c.chat.completions.create(model='{model}', "
        "messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)\"\n",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print("Ctrl-C stops everything.")
