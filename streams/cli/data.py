"""Commands for data in and out: publishing notes, querying ClickHouse, exporting reviews, reviewer accounts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from streams.cli.options import CliContext, configured_task, format_option, option


@click.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True))
@format_option()
@option(
    "--wire",
    envvar="EHRSTREAM_PUBLISH_WIRE",
    type=click.Choice(["avro", "json"]),
    default="avro",
    show_default=True,
    help="Encoding on the notes topic: Avro (single-object, or Confluent framing with avro_wire = confluent) or JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def publish(obj: CliContext, file: Path, fmt: str, wire: str, as_json: bool) -> None:
    """Validate and publish notes from FILE (or every file of the format in a directory) to the notes topic."""
    from streams.ingest.publish import publish_file

    settings = obj.settings()
    summary = publish_file(
        file,
        settings,
        obj.bootstrap(),
        settings.topics.notes,
        wire=wire,  # type: ignore[arg-type]
        progress=not as_json,
        fmt=fmt,  # type: ignore[arg-type]
    )
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    click.echo(f"accepted {summary.accepted}, rejected {summary.rejected}")
    for reason, count in summary.reasons.most_common():
        click.echo(f"  {count:>6}  {reason}")
    unit = {"notes": "line", "fhir": "note", "hl7v2": "message"}[fmt]
    for position, reason, name in summary.examples:
        click.echo(f"  {name + ' ' if name else ''}{unit} {position}: {reason}")


@click.command()
@click.argument("sql")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Bind {NAME:Type} in SQL to VALUE (repeatable).")
@click.option("--allow-writes", is_flag=True, help="Allow statements other than reads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def query(obj: CliContext, sql: str, params: tuple[str, ...], allow_writes: bool, as_json: bool) -> None:
    """Run SQL against ClickHouse (the server, the running embedded sink, or embedded chdb directly)."""
    from streams.query.reader import format_table, run_query

    parameters = dict(p.split("=", 1) for p in params) if params else None
    result = run_query(obj.settings(), sql, parameters, allow_writes=allow_writes)
    if as_json:
        click.echo(json.dumps({"columns": result.columns, "rows": result.rows}, default=str))
    else:
        click.echo(format_table(result))


@click.command()
@option("--task", envvar="EHRSTREAM_EXPORT_TASK", required=True, help="Task name, as configured.")
@option(
    "--format",
    "fmt",
    envvar="EHRSTREAM_EXPORT_FORMAT",
    type=click.Choice(["jsonl", "prodigy", "labelstudio"]),
    default="jsonl",
    show_default=True,
    help="jsonl: what `ehrstream train --data` reads; prodigy: Prodigy task JSONL; labelstudio: a Label Studio JSON import.",
)
@option("--out", envvar="EHRSTREAM_EXPORT_OUT", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.pass_obj
def export(obj: CliContext, task: str, fmt: str, out: Path) -> None:
    """Export the task's reviewed notes from ClickHouse as training data."""
    from agents.model_dir import output_labels
    from streams.query.reader import open_reader
    from streams.review.export import export_reviewed

    task_settings = configured_task(obj, task)
    labels = output_labels(task_settings.model_dir, task_settings.kind)
    count = export_reviewed(open_reader(obj.settings(), direct_ok=True), task, task_settings.kind, fmt, out, labels)  # type: ignore[arg-type]
    click.echo(f"exported {count} reviewed notes to {out} ({fmt})")


@click.group()
def reviewer() -> None:
    """Reviewer accounts for the review app."""


@reviewer.command("hash")
@click.argument("reviewer_id")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin instead of prompting.")
def reviewer_hash(reviewer_id: str, password_stdin: bool) -> None:
    """Print the config entry (scrypt hash, never the password) for REVIEWER_ID."""
    from pydantic import SecretStr

    from streams.review.accounts import hash_password
    from streams.settings import ReviewerAccount

    password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise click.UsageError("use a password of at least 12 characters")
    account = ReviewerAccount(id=reviewer_id, password_hash=SecretStr(hash_password(password)))
    click.echo(f'[[review.reviewers]]\nid = "{account.id}"\npassword_hash = "{account.password_hash.get_secret_value()}"')


@click.command("review-health")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_obj
def review_health(obj: CliContext, as_json: bool) -> None:
    """Queue health for the review lead: backlog per task, agreement per label, decisions per reviewer per day, the
    review load (flagged items per note), the audited precision of auto-accepted items against the target, and the live
    estimate from every reviewed accepted item (streams/review/estimate.py)."""
    from streams.query.reader import open_reader
    from streams.review.audit import judged
    from streams.review.estimate import calibrated_precision
    from streams.review.store import ReviewStore

    settings = obj.settings()
    reader = open_reader(settings, direct_ok=True)
    health = ReviewStore(reader, {t.name: t.kind for t in settings.tasks}).health()
    health["auto_precision_live"] = [calibrated_precision(reader, t.name) for t in settings.tasks if t.kind.value == "ner"]
    health["auto_precision"] = judged(health["auto_precision"], settings.review.target_precision, settings.review.min_audit_items)
    low = [r for r in health["auto_precision"] if r["verdict"] == "low" and not r["label"]]
    for row in low:
        click.echo(
            f"WARNING: task {row['task']} ({row['model']}): audited precision {row['precision']} over {row['items']} items, "
            f"lower end {row['lower']} < target {settings.review.target_precision}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(health, default=str))
        return
    from streams.query.reader import format_table
    from streams.sink.backend import QueryResult

    for name, rows in health.items():
        click.echo(f"\n{name}")
        columns = list(rows[0]) if rows else ["(none yet)"]
        click.echo(format_table(QueryResult(columns, [list(r.values()) for r in rows])))


@click.command("silver-labels")
@option(
    "--export",
    "export_dir",
    envvar="EHRSTREAM_SILVER_EXPORT",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="FHIR bulk-export directory (DocumentReference, Condition, Patient NDJSON).",
)
@option("--train-out", envvar="EHRSTREAM_SILVER_TRAIN_OUT", required=True, type=click.Path(path_type=Path, dir_okay=False))
@option("--dev-out", envvar="EHRSTREAM_SILVER_DEV_OUT", required=True, type=click.Path(path_type=Path, dir_okay=False))
@option(
    "--add-train",
    envvar="EHRSTREAM_SILVER_ADD_TRAIN",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A labelled NER corpus appended to the train file.",
)
@option(
    "--add-dev",
    envvar="EHRSTREAM_SILVER_ADD_DEV",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A labelled NER corpus appended to the dev file.",
)
@option("--label", envvar="EHRSTREAM_SILVER_LABEL", default="Disease", show_default=True, help="Entity type of the conditions.")
def silver_labels(export_dir: Path, train_out: Path, dev_out: Path, add_train: Path | None, add_dev: Path | None, label: str) -> None:
    """Silver NER training data from a FHIR export: every occurrence of a patient's coded condition in their notes,
    split by patient (JSON Lines, the format `train` reads)."""
    from streams.learning.silver_labels import write_silver_files

    click.echo(json.dumps(write_silver_files(export_dir, train_out, dev_out, add_train, add_dev, label)))
