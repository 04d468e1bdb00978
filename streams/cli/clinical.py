"""Commands for clinical meaning: assertion status of given spans, the ICD-10-CM index and its scores, and the check
of a FHIR export's notes against its coded conditions."""

from __future__ import annotations

import json
from pathlib import Path

import click

from streams.cli.options import CliContext, option


@click.command()
@option(
    "--input",
    "input_file",
    envvar="EHRSTREAM_ASSERTION_INPUT",
    type=click.File("r", encoding="utf-8"),
    default="-",
    show_default=True,
    help='JSON Lines of {"id", "text", "start", "end"}: the span text[start:end] whose status is asked ("-": stdin).',
)
@option("--output", envvar="EHRSTREAM_ASSERTION_OUTPUT", type=click.File("w", encoding="utf-8"), default="-", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON Lines out (the only format; accepted for symmetry with the other commands).")
def assertion(input_file: click.utils.LazyFile, output: click.utils.LazyFile, as_json: bool) -> None:
    """Assertion status (present, absent, possible, hypothetical, historical, family) and cue of each span, one JSON
    line per input line, in order; a malformed line gets an error object with its line number."""
    from streams.clinical.assertion_lines import run_assertion_file

    lines, errors = run_assertion_file(input_file, output)  # type: ignore[arg-type]
    if errors:
        click.echo(f"{errors} of {lines} lines could not be read (error objects in the output)", err=True)


@click.group()
def codes() -> None:
    """The ICD-10-CM coder: build its index, score it on a mapping set, look mentions up."""


@codes.command("build")
@click.pass_obj
def codes_build(obj: CliContext) -> None:
    """Embed the ICD-10-CM table into the configured index directory (icd10cm_index; about 2 minutes on 2 CPU cores)."""
    from agents.clinical.coding import Icd10Coder

    settings = obj.settings()
    directory = settings.icd10cm_index
    coder = Icd10Coder.build(directory, device=settings.device, onnx_cache=settings.onnx_cache())
    click.echo(json.dumps({"index": str(directory), "entries": len(coder.entries)}))


@codes.command("evaluate")
@option(
    "--data",
    envvar="EHRSTREAM_CODES_DATA",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TSV: mention (or display) and icd10cm columns.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object of the scores.")
@click.pass_obj
def codes_evaluate(obj: CliContext, data: Path, as_json: bool) -> None:
    """Top-1 accuracy at the category (3 characters) and full-code level, top-3, and the scores of right and wrong codes."""
    from agents.clinical.coding import Icd10Coder
    from streams.clinical.codes_check import evaluate_codes

    settings = obj.settings()
    result = evaluate_codes(Icd10Coder.load(settings.icd10cm_index, device=settings.device, onnx_cache=settings.onnx_cache()), data)
    click.echo(json.dumps(result) if as_json else json.dumps({k: v for k, v in result.items() if k != "wrong_category"}, indent=1))


@codes.command("lookup")
@click.argument("mentions", nargs=-1, required=True)
@click.pass_obj
def codes_lookup(obj: CliContext, mentions: tuple[str, ...]) -> None:
    """The three best ICD-10-CM codes of each MENTION."""
    from agents.clinical.coding import Icd10Coder

    settings = obj.settings()
    coder = Icd10Coder.load(settings.icd10cm_index, device=settings.device, onnx_cache=settings.onnx_cache())
    for mention, found in zip(mentions, coder.candidates(list(mentions)), strict=True):
        click.echo(json.dumps({"mention": mention, "codes": found}))


@click.command("clinical-check")
@option(
    "--export",
    "export_dir",
    envvar="EHRSTREAM_CHECK_EXPORT",
    required=True,
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="FHIR bulk-export directory: DocumentReference, Condition and Patient NDJSON.",
)
@option(
    "--mapping",
    envvar="EHRSTREAM_CHECK_MAPPING",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TSV: snomed, display, icd10cm ('-' where none).",
)
@option("--task", envvar="EHRSTREAM_CHECK_TASK", default="disease", show_default=True)
@option("--device", envvar="EHRSTREAM_DEVICE", default="auto", show_default=True)
@click.option("--held-out", is_flag=True, help="Only the patients `silver-labels` keeps out of training (its dev split).")
@click.pass_obj
def clinical_check(obj: CliContext, export_dir: Path, mapping: Path, task: str, device: str, held_out: bool) -> None:
    """Run the NER task with its clinical layer over an export's notes and score layout, recall of the coded
    conditions, their ICD-10-CM codes and the assertion counts (one JSON object)."""
    from streams.clinical.synthea_check import check_export

    click.echo(json.dumps(check_export(obj.settings(), export_dir, mapping, task, device, held_out)))
