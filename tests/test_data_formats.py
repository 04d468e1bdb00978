"""Labelled data files name their format: --format conll|pubtator|jsonl|csv, inferred from the name or the first line,
and a file that does not parse says which format was tried and what to pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.errors import TrainingDataError
from agents.learning.datasets import NerExample, infer_format, read_examples
from streams.cli import main

CONLL = "Familial\tB-Disease\nhypercholesterolemia\tI-Disease\nis\tO\ncommon\tO\n\nNo\tO\ndisease\tO\n"


def test_a_conll_file_not_named_conll_is_read_as_conll(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text(CONLL)
    assert infer_format(corpus) == "conll"
    examples = read_examples(corpus, "ner")
    assert examples[0] == NerExample("Familial hypercholesterolemia is common", [(0, 29, "Disease")])
    assert read_examples(corpus, "ner", "conll") == examples


def test_a_file_that_does_not_parse_names_the_format_tried_and_the_flag(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text(CONLL)
    with pytest.raises(TrainingDataError, match=r"read as jsonl \(as given by --format\).*--format conll\|pubtator\|csv"):
        read_examples(corpus, "ner", "jsonl")
    unknown = tmp_path / "notes.txt"
    unknown.write_text("just some words\nand more\n")
    with pytest.raises(TrainingDataError, match=r"cannot tell its format.*--format conll\|pubtator\|jsonl\|csv"):
        read_examples(unknown, "ner")
    sniffed = tmp_path / "export.data"
    sniffed.write_text(json.dumps({"text": "has asthma", "entities": [{"start": 4, "end": 10, "label": "Disease"}]}) + "\n")
    assert read_examples(sniffed, "ner") == [NerExample("has asthma", [(4, 10, "Disease")])]


def test_evaluate_takes_format_and_reports_a_bad_file_clearly(tmp_path: Path, tiny_ner_dir: Path) -> None:
    config = tmp_path / "ehrstream.toml"
    config.write_text(f'[[tasks]]\nname = "disease"\nkind = "ner"\nmodel_dir = {json.dumps(str(tiny_ner_dir))}\n')
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text(CONLL)
    runner = CliRunner()
    ok = runner.invoke(main, ["--config", str(config), "evaluate", "--task", "disease", "--data", str(corpus), "--device", "cpu", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output.strip().splitlines()[-1])["n"] == 2
    bad = runner.invoke(
        main, ["--config", str(config), "evaluate", "--task", "disease", "--data", str(corpus), "--format", "pubtator", "--device", "cpu"]
    )
    assert bad.exit_code != 0
    assert isinstance(bad.exception, TrainingDataError) and "read as pubtator" in str(bad.exception)
