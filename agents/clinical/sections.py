"""Section headers of clinical notes, and the section each character of a note belongs to.

A header is a line that names a section, in either style notes are written in:

- plain text, as EHRs and dictation print them: ``HISTORY OF PRESENT ILLNESS:`` or ``Past Medical History:`` at the
  start of a line (the text after the colon, if any, belongs to the section);
- Markdown-style, as FHIR narratives and generated notes write them: ``# Social History`` or ``## Plan``.

Known names (and their abbreviations: HPI, PMH, ROS, A/P, ...) map to a canonical section; a Markdown header or an
all-capitals label that is not known is still a header (never an entity), in section ``other``. A known name followed
by a colon in the middle of a line ("Assessment: ...") is a field label: it is a header too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from agents.clinical.phrase_trie import phrase_pattern, scannable

#: canonical section -> the names it is written as (lower case, spaces between words)
SECTION_NAMES: dict[str, tuple[str, ...]] = {
    "chief_complaint": (
        "chief complaint",
        "cc",
        "reason for visit",
        "reason for admission",
        "presenting complaint",
        "reason for consultation",
        "reason for referral",
    ),
    "history_of_present_illness": (
        "history of present illness",
        "hpi",
        "history of the present illness",
        "present illness",
        "interval history",
        "subjective",
        "history",
    ),
    "past_medical_history": (
        "past medical history",
        "pmh",
        "pmhx",
        "medical history",
        "past history",
        "past medical and surgical history",
        "problem list",
        "active problems",
        "problems",
        "past medical history/problem list",
    ),
    "past_surgical_history": ("past surgical history", "psh", "surgical history", "prior surgeries", "past procedures"),
    "family_history": ("family history", "fh", "fhx", "family hx", "family medical history"),
    "social_history": ("social history", "sh", "social hx", "habits"),
    "medications": (
        "medications",
        "medication",
        "meds",
        "current medications",
        "home medications",
        "discharge medications",
        "medications on admission",
        "outpatient medications",
        "admission medications",
    ),
    "allergies": ("allergies", "allergy", "drug allergies", "allergies and adverse reactions", "adverse reactions"),
    "review_of_systems": ("review of systems", "ros"),
    "physical_exam": (
        "physical exam",
        "physical examination",
        "exam",
        "examination",
        "pe",
        "vital signs",
        "vitals",
        "general",
        "heent",
        "neck",
        "lungs",
        "chest",
        "heart",
        "cardiovascular",
        "abdomen",
        "extremities",
        "neurologic",
        "neuro",
        "skin",
    ),
    "labs": ("labs", "laboratory", "laboratory data", "pertinent results", "laboratory results", "results"),
    "imaging": ("imaging", "radiology", "studies", "technique", "comparison", "indication", "clinical indication"),
    "findings": ("findings",),
    "impression": ("impression", "conclusion", "conclusions", "interpretation"),
    "assessment_and_plan": (
        "assessment and plan",
        "a/p",
        "a&p",
        "assessment/plan",
        "assessment & plan",
        "impression and plan",
        "impression/plan",
    ),
    "assessment": (
        "assessment",
        "diagnosis",
        "diagnoses",
        "discharge diagnosis",
        "discharge diagnoses",
        "admission diagnosis",
        "admitting diagnosis",
        "final diagnosis",
        "primary diagnosis",
        "secondary diagnoses",
        "principal diagnosis",
    ),
    "plan": (
        "plan",
        "recommendations",
        "disposition",
        "follow up",
        "follow-up",
        "discharge instructions",
        "instructions",
        "patient instructions",
    ),
    "hospital_course": (
        "hospital course",
        "brief hospital course",
        "ed course",
        "emergency department course",
        "course",
        "clinical course",
    ),
    "procedures": ("procedures", "procedure", "operations", "procedures performed"),
    "immunizations": ("immunizations", "vaccinations"),
}

#: sections whose content is, by default, not a current condition of the patient
SECTION_ASSERTION: dict[str, str] = {
    "family_history": "family",
    "past_medical_history": "historical",
    "past_surgical_history": "historical",
}

_CANONICAL = {name: section for section, names in SECTION_NAMES.items() for name in names}
_MARKDOWN = re.compile(r"^[ \t]*#{1,6}[ \t]*(?P<name>[^\n#][^\n]*?)[ \t]*#*[ \t]*$", re.MULTILINE)
_LABEL = re.compile(r"^[ \t]*(?:[-*\u2022][ \t]+)?(?P<name>[A-Za-z][A-Za-z0-9/&()' \t-]{0,48}?)[ \t]*:(?!//)", re.MULTILINE)
#: a known section name of more than five characters used as a label within a line (a trie: one branch per position),
#: over :func:`~agents.clinical.phrase_trie.scannable` text (:func:`inline_labels`): the character before the name is
#: consumed (so ``re`` scans for it in C and tries the trie at word starts only) and the colon is looked ahead to (so it
#: can be the character before the next label)
_INLINE = re.compile(r"[^\w/](?P<name>" + phrase_pattern([n for n in _CANONICAL if len(n) > 5], r"[ \t]+") + r")[ \t]*(?=:(?!//))")


def inline_labels(text: str) -> list[tuple[int, int, str]]:
    """(start, end, name) of every known section name of more than five characters used as a label within a line of
    ``text``, its colon included; the name in lower case."""
    return [(m.start("name") - 1, m.end(), m.group("name")) for m in _INLINE.finditer(scannable(text))]


def canonical(name: str) -> str | None:
    """The canonical section a header's words name, or ``None``."""
    return _CANONICAL.get(" ".join(name.lower().replace(":", " ").split()))


@dataclass(frozen=True)
class Sections:
    """The headers of one text: character span of each header and the section it opens, in text order."""

    start: np.ndarray  # int64
    end: np.ndarray  # int64
    names: list[str]

    def at(self, offsets: np.ndarray) -> list[str | None]:
        """The section of each character offset (``None`` before the first header)."""
        idx = np.searchsorted(self.start, offsets, side="right") - 1
        return [self.names[i] if i >= 0 else None for i in idx.tolist()]

    def in_header(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Whether each span ``[start, end)`` overlaps a header."""
        if not len(self.start):
            return np.zeros(len(start), dtype=bool)
        idx = np.searchsorted(self.start, end, side="left") - 1  # the last header starting before the span ends
        safe = np.maximum(idx, 0)
        return (idx >= 0) & (self.end[safe] > start)


def find_sections(text: str) -> Sections:
    """Every header of ``text``: Markdown headers, line-start labels ending in a colon that name a known section or
    are written in capitals, and known section names used as a label within a line."""
    found: dict[int, tuple[int, str]] = {}
    for m in _MARKDOWN.finditer(text):
        found[m.start("name")] = (m.end(), canonical(m.group("name")) or "other")
    for m in _LABEL.finditer(text):
        name = m.group("name")
        section = canonical(name)
        letters = [c for c in name if c.isalpha()]
        if section is None and not (len(letters) >= 3 and all(c.isupper() for c in letters)):
            continue
        found.setdefault(m.start("name"), (m.end(), section or "other"))
    for start, end, name in inline_labels(text):
        found.setdefault(start, (end, canonical(name) or "other"))
    starts = sorted(found)
    return Sections(
        np.array(starts, dtype=np.int64),
        np.array([found[s][0] for s in starts], dtype=np.int64),
        [found[s][1] for s in starts],
    )
