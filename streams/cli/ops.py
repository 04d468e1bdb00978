"""Commands for operators: the demo, the benchmark and the soak on the embedded stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click

from streams.cli.options import CliContext, datasets_option, format_option, option, report


@click.command()
@option("--notes", envvar="EHRSTREAM_DEMO_NOTES", type=int, default=300, show_default=True, help="How many records to publish.")
@datasets_option("Corpora the sample notes come from.")
@option(
    "--input",
    "input_path",
    envvar="EHRSTREAM_DEMO_INPUT",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="Publish the notes of this file or directory (see --format) instead of the sample corpus; --notes is ignored.",
)
@format_option()
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def demo(obj: CliContext, notes: int, datasets: Path, input_path: Path | None, fmt: str, as_json: bool) -> None:
    """Run the whole path once on the embedded stack and report what happened to every note."""
    from streams.ingest import InputFormat
    from streams.ops.demo import run_demo, summary_table
    from streams.runtime.broker import EMBEDDED_TIMEOUTS

    base = obj.settings()
    settings = obj.settings(
        data_dir=(obj.data_dir or base.data_dir) / "demo", topic_partitions=min(base.topic_partitions, 2), **EMBEDDED_TIMEOUTS
    )
    source = (input_path, cast(InputFormat, fmt)) if input_path is not None else None
    summary = run_demo(settings, notes, datasets, echo=lambda line: click.echo(line, err=as_json), source=source)
    click.echo(summary_table(summary), err=as_json)
    example = f"SELECT status, count() FROM {settings.clickhouse_database}.extractions_final GROUP BY status"  # noqa: S608 (printed, not run)
    click.echo(f"explore: ehrstream --data-dir {settings.data_dir} query '{example}'", err=as_json)
    if as_json:
        click.echo(json.dumps(summary))


@click.command()
@option("--notes", envvar="EHRSTREAM_BENCH_NOTES", type=int, default=200, show_default=True, help="Notes in the peak phase.")
@option("--device", envvar="EHRSTREAM_DEVICE", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@option(
    "--models",
    envvar="EHRSTREAM_BENCH_MODELS",
    type=click.Choice(["default", "bert-base", "tiny", "bert-base-shared", "tiny-shared"]),
    default="default",
    show_default=True,
    help="default: the configured tasks' models; bert-base / tiny: random-weight BERT-base or tiny (hidden 32, 2 layers) "
    "NER + classifier (speed only; tiny shows what everything around the model costs); -shared: the two as heads over "
    "one random encoder, which the workers run once per batch.",
)
@option(
    "--workers",
    envvar="EHRSTREAM_BENCH_WORKERS",
    type=int,
    default=0,
    show_default=True,
    help="Worker processes; 0 = the embedded stack's plan (CPU: one per core, at most 4; CUDA: one per two cores, at most 8).",
)
@option(
    "--partitions", envvar="EHRSTREAM_BENCH_PARTITIONS", type=int, default=None, help="Notes-topic partitions [default: max(4, workers)]."
)
@option("--latency-seconds", envvar="EHRSTREAM_BENCH_LATENCY_SECONDS", type=float, default=30.0, show_default=True)
@datasets_option("Where medical_abstracts/train.csv supplies the notes (else the samples).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the results.")
@click.pass_obj
def bench(
    obj: CliContext,
    notes: int,
    device: str,
    models: str,
    workers: int,
    partitions: int | None,
    latency_seconds: float,
    datasets: Path,
    as_json: bool,
) -> None:
    """Raw model throughput vs end to end (notes topic -> ClickHouse), p50/p99 latency at half peak, CPU per stage."""
    from streams.ops.bench import as_json as result_json
    from streams.ops.bench import format_result, run_bench

    settings = obj.settings(device=device)
    result = run_bench(
        settings,
        notes=notes,
        datasets=datasets,
        workers=workers,
        partitions=partitions,
        models=models,
        latency_seconds=latency_seconds,
        echo=lambda line: click.echo(line, err=as_json),
    )
    report(format_result(result), result_json(result), as_json)


@click.command()
@option("--minutes", envvar="EHRSTREAM_SOAK_MINUTES", type=float, default=10.0, show_default=True, help="How long the load runs.")
@option(
    "--rate", envvar="EHRSTREAM_SOAK_RATE", type=float, default=2.0, show_default=True, help="Notes per second (keep it below capacity)."
)
@option("--max-notes", envvar="EHRSTREAM_SOAK_MAX_NOTES", type=int, default=100_000, show_default=True, help="Stop after this many notes.")
@option("--sample-seconds", envvar="EHRSTREAM_SOAK_SAMPLE_SECONDS", type=float, default=15.0, show_default=True)
@option("--workers", envvar="EHRSTREAM_SOAK_WORKERS", type=int, default=0, show_default=True, help="0 = the embedded stack's plan.")
@datasets_option("Where medical_abstracts/train.csv supplies the notes (else the samples).")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the results (every sample included).")
@click.pass_obj
def soak(
    obj: CliContext, minutes: float, rate: float, max_notes: int, sample_seconds: float, workers: int, datasets: Path, as_json: bool
) -> None:
    """Steady load for a bounded time on the embedded stack; prints each process's memory over time and a verdict."""
    from streams.ops.soak import as_json as result_json
    from streams.ops.soak import format_result, run_soak

    result = run_soak(
        obj.settings(),
        minutes=minutes,
        rate=rate,
        datasets=datasets,
        max_notes=max_notes,
        workers=workers,
        sample_seconds=sample_seconds,
        echo=lambda line: click.echo(line, err=as_json),
    )
    report(format_result(result), result_json(result), as_json)


@click.command()
@option("--task", envvar="EHRSTREAM_SIM_TASK", required=True, help="The NER task, as configured.")
@option("--model", envvar="EHRSTREAM_SIM_MODEL", required=True, type=click.Path(path_type=Path, file_okay=False, exists=True))
@option("--stream", envvar="EHRSTREAM_SIM_STREAM", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Labelled sentences (CoNLL) replayed as the stream; their labels answer the reviews.")  # fmt: skip
@option("--dev", envvar="EHRSTREAM_SIM_DEV", required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@option("--budget", envvar="EHRSTREAM_SIM_BUDGET", type=int, default=500, show_default=True, help="Notes reviewed in all.")
@option("--retrain-every", envvar="EHRSTREAM_SIM_RETRAIN_EVERY", type=int, default=100, show_default=True)
@option("--strategy", envvar="EHRSTREAM_SIM_STRATEGY", type=click.Choice(["uncertainty", "fifo", "random"]), default="uncertainty")
@option("--target-precision", envvar="EHRSTREAM_SIM_TARGET_PRECISION", type=float, default=0.9, show_default=True)
@option("--rounds", envvar="EHRSTREAM_SIM_ROUNDS", type=int, default=10, show_default=True, help="Slices of the stream.")
@option("--epochs", envvar="EHRSTREAM_SIM_EPOCHS", type=int, default=8, show_default=True, help="Per candidate.")
@option("--out", envvar="EHRSTREAM_SIM_OUT", required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the summary.")
@click.pass_obj
def simulate(obj: CliContext, task: str, model: Path, stream: Path, dev: Path, budget: int, retrain_every: int, strategy: str,
             target_precision: float, rounds: int, epochs: int, out: Path, as_json: bool) -> None:  # fmt: skip
    """Replay a labelled corpus through the real stack with the gold labels as the reviewer: review rate, dev F1, the
    audited precision estimate against the truth, and every promotion, as a table, PNG plots and summary.json."""
    from streams.ops.simulate import SimulationConfig, run_simulation, summary
    from streams.ops.simulate_report import plots, table
    from streams.runtime.broker import EMBEDDED_TIMEOUTS

    config = SimulationConfig(
        task, model, stream, dev, budget, retrain_every, cast(Any, strategy), target_precision, out, rounds, epochs=epochs
    )
    settings = obj.settings(topic_partitions=2, **EMBEDDED_TIMEOUTS)
    result = summary(run_simulation(settings, config, lambda line: click.echo(line, err=as_json)))
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    click.echo(table(result["rounds"]), err=as_json)
    click.echo("plots: " + ", ".join(str(p) for p in plots(result, out)), err=as_json)
    if as_json:
        click.echo(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
