"""Commands that run the service: the worker, the sink, the embedded stack, the review app, one-shot set-up."""

from __future__ import annotations

import json

import click

from streams.cli.options import CliContext, option


@click.command()
@click.pass_obj
def worker(obj: CliContext) -> None:
    """Run the Faust extraction worker (KAFKA_BOOTSTRAP_SERVERS names the broker)."""
    from streams.worker import run_worker

    run_worker(obj.settings(), obj.bootstrap())


@click.command()
@click.pass_obj
def sink(obj: CliContext) -> None:
    """Run the ClickHouse sink: result topics -> ClickHouse (CLICKHOUSE_URL, or embedded chdb with a query endpoint)."""
    from streams.runtime.sink_thread import run_sink

    settings = obj.settings()
    run_sink(settings, obj.bootstrap())


@click.command()
@click.pass_obj
def up(obj: CliContext) -> None:
    """Run the embedded stack (Tansu, worker, sink with query endpoint) until Ctrl-C."""
    from streams.runtime.stack import run_stack

    run_stack(obj.settings(), echo=click.echo)


@click.command("review-ui")
@option("--host", envvar="EHRSTREAM_REVIEW__HOST", default=None, help="Address to listen on [default: review.host, 127.0.0.1].")
@option("--port", envvar="EHRSTREAM_REVIEW__PORT", type=int, default=None, help="Port [default: review.port, 8470].")
@click.pass_obj
def review_ui(obj: CliContext, host: str | None, port: int | None) -> None:
    """Serve the review web app and its JSON API (reviewer accounts come from the `review.reviewers` setting)."""

    from streams.metrics import serve
    from streams.query.reader import open_reader
    from streams.review.serving import start_review_server
    from streams.waiting import run_until_signalled

    settings = obj.settings()
    serve(settings.metrics_port)
    if not settings.review.reviewers:
        raise click.UsageError("no reviewer accounts: add [[review.reviewers]] entries (`ehrstream reviewer hash` makes the hash)")
    server = start_review_server(settings, open_reader(settings), obj.bootstrap(), host, port)
    click.echo(f"review app on {server.url} ({len(settings.review.reviewers)} reviewer accounts); Ctrl-C stops")
    try:
        run_until_signalled()
    finally:
        server.stop()


@click.command()
@option("--wait-seconds", envvar="EHRSTREAM_INIT_WAIT_SECONDS", type=float, default=300.0, show_default=True)
@click.pass_obj
def init(obj: CliContext, wait_seconds: float) -> None:
    """One-shot set-up of a deployment: topics, ClickHouse tables (migrations), schemas in the registry (if any).

    Waits (with backoff) up to --wait-seconds for the broker and ClickHouse; safe to run again.
    """
    from streams.errors import SinkError
    from streams.ops.init import initialise

    try:
        ok = initialise(obj.settings(), obj.bootstrap(), wait_seconds, echo=click.echo)
    except SinkError as exc:
        raise click.ClickException(f"ClickHouse not ready after {wait_seconds:.0f} s: {exc}") from None
    if not ok:
        raise SystemExit(1)


@click.command()
@click.option("--create/--list-only", default=True, show_default=True, help="Create missing project topics, or only list.")
@click.pass_obj
def topics(obj: CliContext, create: bool) -> None:
    """Create (if missing) and list the project's topics."""
    from streams.kafka.clients import admin, ensure_topics

    settings = obj.settings()
    bootstrap = obj.bootstrap()
    if create:
        names = ensure_topics(settings, bootstrap)
    else:
        client = admin(settings, bootstrap)
        names = sorted(client.list_topics())
        client.close()
    ours = set(settings.topics.all())
    for name in names:
        click.echo(f"{name}{'  (ehrstream)' if name in ours else ''}")


@click.command()
@click.option("--register", is_flag=True, help="Register the current schemas (after the compatibility check passes).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def schemas(obj: CliContext, register: bool, as_json: bool) -> None:
    """Check the project's Avro schemas: history readable, and (with SCHEMA_REGISTRY_URL) registry compatibility.

    Exits 1 when a schema is incompatible. Subjects are `<topic>-value` (TopicNameStrategy).
    """
    import dataclasses

    from streams.kafka.schema_registry import check_schemas

    statuses = check_schemas(obj.settings(), register=register)
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(s), "ok": s.ok} for s in statuses]))
    else:
        for s in statuses:
            registry = "no registry" if s.registry_compatible is None else ("compatible" if s.registry_compatible else "INCOMPATIBLE")
            registered = f", id {s.registry_id}" if s.registry_id is not None else ""
            history = "history readable" if s.history_readable else "HISTORY NOT READABLE"
            click.echo(f"{s.subject:<32} {s.model:<15} {s.fingerprint}  {history}, {registry}{registered}")
    if not all(s.ok for s in statuses):
        raise SystemExit(1)
