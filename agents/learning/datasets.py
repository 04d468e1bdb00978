"""Reading labelled examples: the shipped corpora's formats and ehrstream's JSONL.

Every NER source becomes text plus character spans, so one alignment routine serves
CoNLL files, JSONL exports and reviewed rows from ClickHouse alike.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from agents.errors import TrainingDataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: str


@dataclass(frozen=True)
class NerExample:
    text: str
    #: (start, end, label) character spans, text[start:end] is the mention
    spans: list[tuple[int, int, str]] = field(default_factory=list)


Example = ClassificationExample | NerExample


def read_medical_abstracts(path: Path) -> list[ClassificationExample]:
    """``condition_label,medical_abstract`` CSV; label names from ``labels.csv`` beside it."""
    names_file = path.parent / "labels.csv"
    names: dict[str, str] = {}
    if names_file.exists():
        with names_file.open(newline="", encoding="utf-8") as fh:
            names = {row["condition_label"]: row["condition_name"] for row in csv.DictReader(fh)}
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "medical_abstract" not in rows[0]:
        raise TrainingDataError(str(path), "expected columns condition_label,medical_abstract")
    return [ClassificationExample(r["medical_abstract"], names.get(r["condition_label"], r["condition_label"])) for r in rows]


def read_conll(path: Path) -> list[NerExample]:
    """``token<TAB>BIO-tag`` lines, blank line between sentences; tokens joined by single spaces."""
    examples: list[NerExample] = []
    tokens: list[tuple[str, str]] = []

    def flush() -> None:
        if not tokens:
            return
        text_parts: list[str] = []
        spans: list[tuple[int, int, str]] = []
        pos = 0
        open_span: list = []  # type: ignore[type-arg]
        for token, tag in tokens:
            start = pos
            text_parts.append(token)
            pos += len(token)
            if tag.startswith("B-") or (tag.startswith("I-") and (not open_span or open_span[2] != tag[2:])):
                if open_span:
                    spans.append((open_span[0], open_span[1], open_span[2]))
                open_span = [start, pos, tag[2:]]
            elif tag.startswith("I-"):
                open_span[1] = pos
            else:
                if open_span:
                    spans.append((open_span[0], open_span[1], open_span[2]))
                open_span = []
            pos += 1
        if open_span:
            spans.append((open_span[0], open_span[1], open_span[2]))
        examples.append(NerExample(" ".join(text_parts), spans))
        tokens.clear()

    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                flush()
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise TrainingDataError(f"{path}:{line_no}", "expected token<TAB>tag")
            tokens.append((parts[0], parts[-1]))
    flush()
    return examples


def read_pubtator(path: Path) -> list[NerExample]:
    """PubTator documents: ``PMID|t|title``, ``PMID|a|abstract``, then ``PMID<TAB>start<TAB>end<TAB>text<TAB>type<TAB>id``.

    Offsets are into title + " " + abstract: whole documents, as notes are. The corpus has a few
    annotations whose offsets are off by a character or two; a mention found within 5 characters of
    its stated offsets is re-anchored there, and one that cannot be found is skipped and logged.
    """
    docs: dict[str, dict[str, Any]] = {}
    duplicate = ""
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            duplicate = ""
            continue
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[1] in ("t", "a") and parts[0].isdigit():
            if parts[1] == "t" and parts[0] in docs:  # a repeated document (the train split has one): keep the first
                duplicate = parts[0]
                continue
            if parts[0] != duplicate:
                docs.setdefault(parts[0], {"parts": [], "spans": []})["parts"].append(parts[2])
            continue
        cols = line.split("\t")
        if len(cols) >= 5 and cols[0] in docs and cols[0] != duplicate:
            docs[cols[0]]["spans"].append((int(cols[1]), int(cols[2]), "Disease", cols[3], line_no))
    out = []
    for pmid, doc in docs.items():
        text = " ".join(doc["parts"])
        spans = []
        for start, end, label, mention, line_no in doc["spans"]:
            if text[start:end] != mention:
                found = text.find(mention.strip(), max(0, start - 5), end + 5)
                if found < 0:
                    log.warning("%s:%d: mention of %s not found near %d-%d; skipped", path.name, line_no, pmid, start, end)
                    continue
                start, end = found, found + len(mention.strip())
            spans.append((start, end, label))
        out.append(NerExample(text, sorted(set(spans))))
    return out


def read_jsonl(path: Path, kind: str) -> list[Example]:
    """ehrstream JSONL: ``{"text", "label"}`` (classification) or ``{"text", "entities": [{"start","end","label"}]}``."""
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = obj["text"]
                if kind == "classification":
                    out.append(ClassificationExample(text, str(obj["label"])))
                else:
                    spans = [(int(e["start"]), int(e["end"]), str(e["label"])) for e in obj.get("entities", [])]
                    for start, end, _ in spans:
                        if not 0 <= start < end <= len(text):
                            raise TrainingDataError(f"{path}:{line_no}", f"span {start}-{end} outside the text")
                    out.append(NerExample(text, spans))
            except (KeyError, TypeError, ValueError) as exc:
                raise TrainingDataError(f"{path}:{line_no}", f"bad record ({type(exc).__name__}: {exc})") from None
    return out


#: the labelled-data formats ``read_examples`` reads
DataFormat = Literal["conll", "pubtator", "jsonl", "csv"]
DATA_FORMATS: tuple[DataFormat, ...] = ("conll", "pubtator", "jsonl", "csv")
_BIO_TAG = re.compile(r"^(O|[BI]-\S+)$")


def infer_format(path: Path) -> DataFormat | None:
    """The format a file's name says (``*.conll*``, ``*.pubtator*``, ``*.jsonl``/``*.json``, ``*.csv``), else what its
    first line looks like; None when neither tells."""
    name = path.name.lower()
    for fmt, marks in (("conll", (".conll",)), ("pubtator", (".pubtator",)), ("jsonl", (".jsonl", ".json")), ("csv", (".csv",))):
        if any(mark in name for mark in marks):
            return cast(DataFormat, fmt)
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = next((line.strip() for line in fh if line.strip()), "")
    if first.startswith("{"):
        return "jsonl"
    if re.match(r"^\d+\|[ta]\|", first):
        return "pubtator"
    if "\t" in first and _BIO_TAG.match(first.split("\t")[-1]):
        return "conll"
    if "," in first and "medical_abstract" in first:
        return "csv"
    return None


def read_examples(path: Path, kind: str, fmt: DataFormat | None = None) -> list[Example]:
    """Labelled examples from ``path`` in ``fmt`` (default: :func:`infer_format`). A file that does not parse says
    which format was tried and what to pass instead."""
    if not path.exists():
        raise TrainingDataError(str(path), "no such file")
    chosen = fmt or infer_format(path)
    if chosen is None:
        raise TrainingDataError(str(path), f"cannot tell its format from its name or first line; pass --format {'|'.join(DATA_FORMATS)}")
    readers: dict[str, Callable[[Path], Sequence[Example]]] = {
        "conll": read_conll,
        "pubtator": read_pubtator,
        "csv": read_medical_abstracts,
        "jsonl": lambda p: read_jsonl(p, kind),
    }
    try:
        examples = readers[chosen](path)
    except (TrainingDataError, ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        reason = exc.reason if isinstance(exc, TrainingDataError) else f"{type(exc).__name__}: {exc}"
        others = "|".join(f for f in DATA_FORMATS if f != chosen)
        how = "as given by --format" if fmt else "inferred from the file"
        raise TrainingDataError(
            str(path), f"read as {chosen} ({how}) but {reason}; if it is another format pass --format {others}"
        ) from None
    if not examples:
        raise TrainingDataError(str(path), f"no examples (read as {chosen})")
    wanted = ClassificationExample if kind == "classification" else NerExample
    if not isinstance(examples[0], wanted):
        raise TrainingDataError(str(path), f"holds {type(examples[0]).__name__}s, task kind is {kind}")
    return list(examples)


def data_hash(examples: Iterable[Example]) -> str:
    """sha256 over the examples' content, in order: the exact training data a model saw."""
    digest = hashlib.sha256()
    for ex in examples:
        payload = {"text": ex.text, "label": ex.label} if isinstance(ex, ClassificationExample) else {"text": ex.text, "spans": ex.spans}
        digest.update(json.dumps(payload, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
