"""Silver NER labels from a FHIR bulk export: each note labelled with its patient's coded conditions.

Synthea (and many EHR exports) write a patient's coded conditions into the notes in the words of the code's display
("Patient has a history of acute bronchitis (disorder), stress (finding)"). Every occurrence of one of the patient's
Condition displays (its terminology tag dropped) in a note becomes an entity; everything else, the names, headers,
bullets and tags included, is labelled outside. That teaches a model clinical-note layout, which the literature
corpora (abstracts) never show it.

Patients are split, never notes: ``dev_every`` puts every n-th patient (in id order) in the dev split, so the dev
score is on patients the model never saw. A patient with very many notes is capped (``max_notes_per_patient``, a
seeded sample) so one patient's templates do not dominate.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from agents.learning.datasets import NerExample
from streams.ingest.fhir_export import patient_conditions
from streams.ingest.publish import read_notes


@dataclass(frozen=True)
class SilverSplit:
    train: list[NerExample]
    dev: list[NerExample]
    train_patients: int
    dev_patients: int


def label_note(text: str, displays: set[str], label: str) -> NerExample:
    """Every case-insensitive, whole-word occurrence of a display in ``text``, longest first, never overlapping."""
    taken: list[tuple[int, int]] = []
    for display in sorted(displays, key=len, reverse=True):
        for m in re.finditer(r"(?<![\w-])" + re.escape(display) + r"(?![\w-])", text, re.IGNORECASE):
            if all(m.end() <= a or m.start() >= b for a, b in taken):
                taken.append((m.start(), m.end()))
    return NerExample(text, [(a, b, label) for a, b in sorted(taken)])


def dev_patients(patients: list[str], dev_every: int = 3) -> set[str]:
    """The patients :func:`silver_split` holds out: every ``dev_every``-th in id order."""
    return {p for i, p in enumerate(sorted(patients)) if i % dev_every == dev_every - 1}


def silver_split(
    export_dir: Path, label: str = "Disease", dev_every: int = 3, max_notes_per_patient: int = 60, seed: int = 13
) -> SilverSplit:
    conditions = {patient: {c.name for c in found} for patient, found in patient_conditions(export_dir).items()}
    notes: dict[str, list[str]] = {}
    for _, _, note in read_notes(export_dir / "DocumentReference.ndjson", "fhir"):
        if not isinstance(note, str):
            notes.setdefault(note.patient_id, []).append(note.text)
    train: list[NerExample] = []
    dev: list[NerExample] = []
    patients = sorted(notes)
    rng = random.Random(seed)  # noqa: S311 (sampling, not security)
    for i, patient in enumerate(patients):
        texts = sorted(set(notes[patient]))
        if len(texts) > max_notes_per_patient:
            texts = rng.sample(texts, max_notes_per_patient)
        examples = [label_note(t, conditions.get(patient, set()), label) for t in texts]
        (dev if i % dev_every == dev_every - 1 else train).extend(examples)
    n_dev = sum(1 for i in range(len(patients)) if i % dev_every == dev_every - 1)
    return SilverSplit(train, dev, len(patients) - n_dev, n_dev)


def write_jsonl(examples: list[NerExample], path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for e in examples:
            entities = [{"start": a, "end": b, "label": lab} for a, b, lab in e.spans]
            fh.write(json.dumps({"text": e.text, "entities": entities}, ensure_ascii=False) + "\n")


def write_silver_files(
    export_dir: Path, train_out: Path, dev_out: Path, add_train: Path | None, add_dev: Path | None, label: str
) -> dict[str, int]:
    """The silver split of ``export_dir`` as JSONL, each file with a labelled corpus appended (the model keeps its
    skills on the corpus while it learns the notes' layout)."""
    from agents.learning.datasets import read_examples

    split = silver_split(export_dir, label)
    train = split.train + ([e for e in read_examples(add_train, "ner") if isinstance(e, NerExample)] if add_train else [])
    dev = split.dev + ([e for e in read_examples(add_dev, "ner") if isinstance(e, NerExample)] if add_dev else [])
    write_jsonl(train, train_out)
    write_jsonl(dev, dev_out)
    return {
        "silver_train_notes": len(split.train),
        "silver_dev_notes": len(split.dev),
        "train_patients": split.train_patients,
        "dev_patients": split.dev_patients,
        "train_examples": len(train),
        "dev_examples": len(dev),
    }
