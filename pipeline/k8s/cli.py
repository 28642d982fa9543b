"""`pipeline k8s …`: the generated Kubernetes manifests.

    pipeline k8s generate [--check] [--root .]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Kubernetes manifests (deploy/k8s).", no_args_is_help=True)


@app.command()
def generate(
    check: Annotated[bool, typer.Option(help="Fail if a generated file differs instead of writing.")] = False,
    root: Annotated[Path, typer.Option(help="Repository root.")] = Path("."),
) -> None:
    """Write the PrometheusRule, dashboard ConfigMaps and KafkaTopics under deploy/k8s/base/generated."""
    from pipeline.k8s.generate import write

    out_of_date = write(root, check=check)
    if check and out_of_date:
        typer.echo(f"stale (run `pipeline k8s generate`): {', '.join(map(str, out_of_date))}", err=True)
        raise typer.Exit(1)
