"""The `pipeline` command: every stage, the local broker, and the developer's tools.

Stages are imported only when their command runs, so `pipeline --help` stays fast and one stage's
dependencies never load in another's process.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import Settings, SettingsError, settings_for_command

# Rich tracebacks print local variables, which may hold secrets: plain tracebacks only. Plain help too
# (`rich_markup_mode=None`): Typer's rich help labels every flag `<bool>`, though a flag takes no value.
PLAIN = {"no_args_is_help": True, "rich_markup_mode": None}
app = typer.Typer(
    help="Observability-first delivery pipeline for the WhatsApp Cloud API.",
    pretty_exceptions_enable=False,
    **PLAIN,  # type: ignore[arg-type]
)
kafka_app = typer.Typer(help="Run a local single-node Kafka broker (KRaft) from Maven jars.", **PLAIN)  # type: ignore[arg-type]
topics_app = typer.Typer(help="Kafka topics of the pipeline.", **PLAIN)  # type: ignore[arg-type]
schemas_app = typer.Typer(help="JSON Schemas of the message contracts.", **PLAIN)  # type: ignore[arg-type]
app.add_typer(kafka_app, name="kafka")
app.add_typer(importlib.import_module("pipeline.k8s.cli").app, name="k8s")
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")
app.add_typer(importlib.import_module("pipeline.store.cli").messages_app, name="messages")
app.add_typer(importlib.import_module("pipeline.deadletters.cli").app, name="dead-letters")

Host = Annotated[str | None, typer.Option(help="Interface to listen on (default from settings).")]
Port = Annotated[int | None, typer.Option(help="Port to listen on (default from settings).")]


def _run_stage(module: str, settings: Settings, check: Callable[[Settings], None] | None = None) -> None:
    from pipeline.kafka_client import check_tls

    try:
        if check is not None:
            check(settings)
        check_tls(settings.kafka)
    except SettingsError as exc:
        typer.echo(f"pipeline: {exc}", err=True)
        raise typer.Exit(2) from None
    serve: Callable[[Settings], Coroutine[Any, Any, None]] = importlib.import_module(module).serve
    try:
        import uvloop

        uvloop.run(serve(settings))
    except KeyboardInterrupt:
        pass


@app.command()
def api(host: Host = None, port: Port = None) -> None:
    """Producer API: accept send requests over HTTP and publish them to Kafka."""
    from pipeline.config import require_production_api_keys

    _run_stage("pipeline.api", settings_for_command(api={"host": host, "port": port}), require_production_api_keys)


@app.command()
def sender(host: Host = None, port: Port = None) -> None:
    """Sender: consume send requests and deliver them to the Graph API (metrics on --port)."""
    from pipeline.config import require_sender_credentials

    _run_stage("pipeline.sender", settings_for_command(sender={"host": host, "port": port}), require_sender_credentials)


@app.command()
def ingest(host: Host = None, port: Port = None) -> None:
    """Status ingest: receive Meta's webhooks and turn them into status events."""
    from pipeline.config import require_ingest_secrets

    _run_stage("pipeline.ingest", settings_for_command(ingest={"host": host, "port": port}), require_ingest_secrets)


@app.command()
def notify(host: Host = None, port: Port = None) -> None:
    """Callbacks: POST every outcome, status and reply, signed, to the business's endpoint (metrics on --port)."""
    from pipeline.notify.service import require_safe_subscriptions

    _run_stage("pipeline.notify", settings_for_command(notify={"host": host, "port": port}), require_safe_subscriptions)


@app.command()
def sandbox(host: Host = None, port: Port = None) -> None:
    """Sandbox: a local stand-in for Meta's Graph API, with signed status webhooks."""
    _run_stage("pipeline.sandbox", settings_for_command(sandbox={"host": host, "port": port}))


@app.command()
def store(host: Host = None, port: Port = None) -> None:
    """Message store: project every message, status and reply into a database and serve the read API."""
    _run_stage("pipeline.store", settings_for_command(store={"host": host, "port": port}))


@app.command()
def run(
    logs: Annotated[bool, typer.Option("--logs", help="Stream the stages' JSON logs instead of the status.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Broker state, logs and monitoring data (default: the project's .cache).")
    ] = None,
    monitoring: Annotated[
        bool, typer.Option("--monitoring/--no-monitoring", help="Start Prometheus and Alertmanager if installed.")
    ] = True,
) -> None:
    """Everything locally: broker, topics, sandbox (without credentials) and every stage. Ctrl-C stops all."""
    from pipeline.local.run import run_local

    raise typer.Exit(run_local(settings_for_command(), data_dir=data_dir, monitoring=monitoring, logs=logs))


# --- kafka ----------------------------------------------------------------------------------------

DataDir = Annotated[Path, typer.Option(help="Broker state directory (default: the project's .cache/kafka-data).")]
# Anchored to the project, not the current directory: `kafka status` answers the same from anywhere.
_DEFAULT_DATA = importlib.import_module("pipeline.local.kafka").CACHE / "kafka-data"


def _broker(data_dir: Path, port: int) -> Any:
    from pipeline.local.kafka import LocalKafka

    return LocalKafka(data_dir=data_dir, port=port)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Resolve the broker's jars with Maven (cached; a second call downloads nothing)."""
    from pipeline.local.kafka import fetch_jars

    typer.echo(fetch_jars())


@kafka_app.command("start")
def kafka_start(data_dir: DataDir = _DEFAULT_DATA, port: int = 9092) -> None:
    """Start the broker in the background and wait until it answers."""
    broker = _broker(data_dir, port)
    if broker.running():
        typer.echo(f"already running (pid {broker.pid()}) on {broker.bootstrap_servers}")
        return
    broker.start()
    broker.wait_ready()
    typer.echo(f"kafka ready on {broker.bootstrap_servers} (pid {broker.pid()}, data {data_dir})")


@kafka_app.command("stop")
def kafka_stop(data_dir: DataDir = _DEFAULT_DATA, port: int = 9092) -> None:
    """Stop the broker started by `pipeline kafka start`."""
    _broker(data_dir, port).stop()
    typer.echo("kafka stopped")


@kafka_app.command("status")
def kafka_status(data_dir: DataDir = _DEFAULT_DATA, port: int = 9092) -> None:
    """Say whether the broker runs; exit 1 if not."""
    broker = _broker(data_dir, port)
    if broker.running():
        typer.echo(f"running (pid {broker.pid()}) on {broker.bootstrap_servers}")
    else:
        typer.echo("not running")
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that is missing (idempotent)."""
    from pipeline.topics import create_topics

    settings = settings_for_command()
    created = asyncio.run(create_topics(settings.kafka))
    typer.echo(f"created: {', '.join(created)}" if created else "all topics exist")


@topics_app.command("list")
def topics_list() -> None:
    """Print the topic catalog."""
    from pipeline.topics import CATALOG, TopicCatalog

    catalog = TopicCatalog(settings_for_command().kafka)
    for spec in CATALOG:
        typer.echo(f"{catalog.name(spec.name):24} key={spec.key:22} {spec.carries}")


@topics_app.command("export")
def topics_export(
    format: Annotated[str, typer.Option("--format", help="Output format: strimzi (KafkaTopic resources).")] = "strimzi",
    cluster: Annotated[str, typer.Option(help="Strimzi Kafka cluster (the strimzi.io/cluster label).")] = "delivery",
) -> None:
    """Print the topic catalog as Strimzi KafkaTopic resources (partitions and replicas from KAFKA_*)."""
    import yaml

    from pipeline.topics import strimzi_topics

    if format != "strimzi":
        typer.echo(f"pipeline: --format must be strimzi; got {format!r}", err=True)
        raise typer.Exit(2)
    typer.echo(yaml.safe_dump_all(strimzi_topics(settings_for_command().kafka, cluster), sort_keys=False), nl=False)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Option(help="Where to write the schemas.")] = Path("docs/schemas"),
    check: Annotated[bool, typer.Option(help="Fail if the files differ instead of writing.")] = False,
) -> None:
    """Write the JSON Schema of every contract (or check that the committed ones are current)."""
    from pipeline.contracts.schemas import export_schemas

    stale = export_schemas(directory, check=check)
    if check and stale:
        typer.echo(f"stale schemas (run `pipeline schemas export`): {', '.join(stale)}", err=True)
        raise typer.Exit(1)


@app.command()
def send(
    to: Annotated[str | None, typer.Option(help="Recipient phone number (E.164).")] = None,
    text: Annotated[str | None, typer.Option(help="Text body.")] = None,
    file: Annotated[Path | None, typer.Option(help="CSV of recipients (column `to`, plus template params).")] = None,
    template: Annotated[str | None, typer.Option(help="Template name.")] = None,
    language: Annotated[str, typer.Option(help="Template language code.")] = "en_US",
    phone_number_id: Annotated[str | None, typer.Option(help="Business number to send from.")] = None,
    api_url: Annotated[str, typer.Option(envvar="PIPELINE_API_URL", help="Producer API base URL.")] = (
        "http://127.0.0.1:8080"
    ),
    api_key: Annotated[str, typer.Option(envvar="PIPELINE_API_KEY", help="API key.")] = "dev-key",
    read: Annotated[str | None, typer.Option(help="Mark this inbound wamid read (with --to, its sender).")] = None,
    typing: Annotated[bool, typer.Option(help="With --read: also show the typing indicator.")] = False,
    rate: Annotated[float | None, typer.Option(help="With --file: at most this many rows per second.")] = None,
) -> None:
    """Send one message (`--to --text`), many from a CSV (`--file --template`), or mark a reply read (`--read`).

    A CSV send is resumable: re-run the same command after Ctrl-C and no row is sent twice."""
    from pipeline.api.send_command import send_command

    raise typer.Exit(
        send_command(
            to=to, text=text, file=file, template=template, language=language,
            phone_number_id=phone_number_id, api_url=api_url, api_key=api_key, read=read, typing=typing,
            rate=rate,
        )
    )


@app.command()
def demo(
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 20.0,
    duration: Annotated[float, typer.Option(help="Seconds to run.")] = 60.0,
    api_url: Annotated[str, typer.Option(envvar="PIPELINE_API_URL", help="Producer API base URL.")] = (
        "http://127.0.0.1:8080"
    ),
    api_key: Annotated[str, typer.Option(envvar="PIPELINE_API_KEY", help="API key.")] = "dev-key",
    seed: Annotated[int | None, typer.Option(help="Random seed, for a repeatable mix.")] = None,
) -> None:
    """Drive a realistic mix of outcomes through the API (to the sandbox's test numbers)."""
    from pipeline.local.demo import DemoPlan, DemoReport, run_demo
    from pipeline.local.prometheus import local_targets

    settings = settings_for_command()
    jobs = ("delivery-sender", "delivery-ingest")
    metrics = [f"http://{t.address}/metrics" for t in local_targets(settings) if t.job in jobs]
    report = DemoReport()
    try:
        asyncio.run(run_demo(api_url, api_key, DemoPlan(rate, duration), seed, metrics_urls=metrics, report=report))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
    typer.echo(report.summary())


@app.command("wamid-ref")
def wamid_ref_command(wamid: str) -> None:
    """Print the short reference that logs and spans carry instead of this wamid."""
    from pipeline.observability.redaction import wamid_ref

    typer.echo(wamid_ref(wamid))


def main() -> None:
    app(prog_name="pipeline")


if __name__ == "__main__":
    main()
