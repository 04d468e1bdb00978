"""``ehrstream assertion``: the assertion status of spans given in a JSON Lines file, for users with their own NER.

Each input line is ``{"id": ..., "text": ..., "start": ..., "end": ...}`` (the span ``text[start:end]`` is the
mention asked about). Each output line is ``{"id": ..., "assertion": ..., "cue": ...}``, in input order, one per input
line; a line that cannot be read gets ``{"id": ..., "assertion": null, "line": N, "error": ...}`` instead (the error names the problem,
never the text). Lines are read in blocks and each block is classified in one batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import numpy as np

from agents.clinical.assertion import AssertionClassifier, section_defaults
from agents.clinical.sections import find_sections

BLOCK = 2048


def _parse(number: int, line: str) -> tuple[Any, str, int, int] | dict[str, Any]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        return {"id": None, "assertion": None, "line": number, "error": f"not JSON ({exc.msg} at column {exc.colno})"}
    if not isinstance(item, dict):
        return {"id": None, "assertion": None, "line": number, "error": "not a JSON object"}
    ident = item.get("id")
    text, start, end = item.get("text"), item.get("start"), item.get("end")
    if not isinstance(text, str):
        return {"id": ident, "assertion": None, "line": number, "error": "'text' must be a string"}
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        return {"id": ident, "assertion": None, "line": number, "error": "'start' and 'end' must be integers"}
    if not 0 <= start < end <= len(text):
        return {
            "id": ident,
            "assertion": None,
            "line": number,
            "error": f"span [{start}, {end}) is not inside the text of {len(text)} characters",
        }
    return ident, text, start, end


def classify_lines(lines: Iterable[str], classifier: AssertionClassifier | None = None) -> Iterator[dict[str, Any]]:
    """One result per input line (blank lines included, as errors), in order."""
    classifier = classifier or AssertionClassifier()
    block: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        block.append((number, line))
        if len(block) >= BLOCK:
            yield from _classify_block(block, classifier)
            block = []
    if block:
        yield from _classify_block(block, classifier)


def _classify_block(block: list[tuple[int, str]], classifier: AssertionClassifier) -> list[dict[str, Any]]:
    parsed = [_parse(number, line) for number, line in block]
    good = [(i, p) for i, p in enumerate(parsed) if isinstance(p, tuple)]
    out: list[dict[str, Any]] = [p if isinstance(p, dict) else {} for p in parsed]
    if not good:
        return out
    texts = [p[1] for _, p in good]
    start = np.array([p[2] for _, p in good], dtype=np.int64)
    end = np.array([p[3] for _, p in good], dtype=np.int64)
    sections = [find_sections(text).at(np.array([s]))[0] for text, s in zip(texts, start.tolist(), strict=True)]
    result = classifier.classify(texts, np.arange(len(texts)), start, end, section_defaults(sections))
    for k, ((i, (ident, text, _, _)), status) in enumerate(zip(good, result.statuses(), strict=True)):
        a, b = int(result.cue_start[k]), int(result.cue_end[k])
        out[i] = {"id": ident, "assertion": status.value, "cue": text[a:b] if a >= 0 else None}
    return out


def run_assertion_file(source: TextIO, sink: TextIO) -> tuple[int, int]:
    """Classify every line of ``source`` into ``sink``; returns (lines, errors)."""
    lines = errors = 0
    for result in classify_lines(line.rstrip("\n") for line in source):
        lines += 1
        errors += "error" in result
        sink.write(json.dumps(result, ensure_ascii=False) + "\n")
    return lines, errors
