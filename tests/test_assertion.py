"""Assertion status: every category, the scope edge cases medspaCy's users reported, and ``ehrstream assertion``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agents.clinical.assertion import AssertionClassifier
from schemas.extraction import Assertion
from streams.cli import main
from streams.clinical.assertion_lines import classify_lines

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "assertion" / "cases.jsonl").read_text().splitlines()]
CLASSIFIER = AssertionClassifier()


def _line(i: int, case: dict[str, str]) -> str:
    start = case["text"].index(case["span"])
    return json.dumps({"id": i, "text": case["text"], "start": start, "end": start + len(case["span"])})


@pytest.mark.parametrize("case", CASES, ids=[f"{c['assertion']}:{c['text'][:40]}" for c in CASES])
def test_each_case_gets_its_status_and_cue(case: dict[str, str]) -> None:
    (result,) = classify_lines([_line(0, case)], CLASSIFIER)
    assert (result["assertion"], result["cue"]) == (case["assertion"], case["cue"])


def test_every_status_is_covered_by_the_cases() -> None:
    assert {c["assertion"] for c in CASES} == {a.value for a in Assertion}


def test_a_batch_gives_what_each_note_gives_alone() -> None:
    """Notes joined into one batch string must not leak cues across notes: 'No' ending one note, 'fever' starting the next."""
    texts = ["Patient reports no", "fever today.", "Denies cough."]
    note, start, end = np.array([1, 2]), np.array([0, 7]), np.array([5, 12])
    together = CLASSIFIER.classify(texts, note, start, end).statuses()
    alone = [CLASSIFIER.classify([texts[n]], np.array([0]), start[k : k + 1], end[k : k + 1]).statuses()[0] for k, n in enumerate(note)]
    assert together == alone == [Assertion.present, Assertion.absent]


def test_the_command_answers_every_line_in_order_and_reports_bad_lines_by_number(tmp_path: Path) -> None:
    lines = [_line(i, c) for i, c in enumerate(CASES[:3])]
    lines[1:1] = ["{not json", json.dumps({"id": "x", "text": "abc", "start": 2, "end": 9}), json.dumps([1, 2])]
    source = tmp_path / "spans.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["assertion", "--input", str(source), "--json"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o.get("id") for o in out] == [0, None, "x", None, 1, 2]
    assert [o.get("line") for o in out if "error" in o] == [2, 3, 4]
    assert all(o["assertion"] is None for o in out if "error" in o)
    assert [o["assertion"] for o in out if "error" not in o] == [c["assertion"] for c in CASES[:3]]
    assert "abc" not in result.stdout.split('"error"')[1]  # errors name the problem, never the text
