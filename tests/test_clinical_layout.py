"""Section headers in both styles, and the layout rules on entity spans: line breaks, bullets, headers, names, tags."""

from __future__ import annotations

import numpy as np

from agents.clinical.layout import refine
from agents.clinical.sections import find_sections
from agents.runners.spans import SpanArrays

DISCHARGE = """DISCHARGE SUMMARY
Patient Name: Jane Roe
CHIEF COMPLAINT: Shortness of breath.
HISTORY OF PRESENT ILLNESS: Mrs. Roe is a 67-year-old woman with COPD who presents with dyspnea.
PAST MEDICAL HISTORY:
1. Hypertension.
2. Type 2 diabetes mellitus.
FAMILY HISTORY: Mother with breast cancer.
Allergies: No known drug allergies.
ASSESSMENT AND PLAN: COPD exacerbation. Rule out pneumonia.
"""

MARKDOWN = """2018-05-16

# Chief Complaint
- Hunger
- Thirst

# History of Present Illness
Corrin41 Sau887
 is a 31 year-old female. Patient has a history of acute bronchitis (disorder), full-time employment (finding).

# Allergies
No Known Allergies.

## Plan
- urine screening for glucose
"""


def _section_of(text: str, phrase: str) -> str | None:
    return find_sections(text).at(np.array([text.index(phrase)]))[0]


def test_plain_text_headers_name_their_sections() -> None:
    assert _section_of(DISCHARGE, "Shortness of breath") == "chief_complaint"
    assert _section_of(DISCHARGE, "dyspnea") == "history_of_present_illness"
    assert _section_of(DISCHARGE, "Hypertension") == "past_medical_history"
    assert _section_of(DISCHARGE, "breast cancer") == "family_history"
    assert _section_of(DISCHARGE, "drug allergies") == "allergies"
    assert _section_of(DISCHARGE, "COPD exacerbation") == "assessment_and_plan"


def test_markdown_headers_name_their_sections() -> None:
    assert _section_of(MARKDOWN, "Hunger") == "chief_complaint"
    assert _section_of(MARKDOWN, "acute bronchitis") == "history_of_present_illness"
    assert _section_of(MARKDOWN, "No Known Allergies") == "allergies"
    assert _section_of(MARKDOWN, "urine screening") == "plan"


def _refine(text: str, spans: list[tuple[int, int]]) -> list[str]:
    arrays = SpanArrays(
        np.zeros(len(spans), dtype=np.int64),
        np.zeros(len(spans), dtype=np.int64),
        np.array([a for a, _ in spans], dtype=np.int64),
        np.array([b for _, b in spans], dtype=np.int64),
        np.full(len(spans), 0.9),
    )
    out = refine([text], arrays, [find_sections(text)])
    return [text[a:b] for a, b in zip(out.start.tolist(), out.end.tolist(), strict=True)]


def _span(text: str, phrase: str) -> tuple[int, int]:
    start = text.index(phrase)
    return start, start + len(phrase)


def test_a_span_across_bullets_becomes_one_span_per_line() -> None:
    assert _refine(MARKDOWN, [_span(MARKDOWN, "Hunger\n- Thirst")]) == ["Hunger", "Thirst"]


def test_a_span_across_a_line_break_is_cut_and_trimmed() -> None:
    text = "Assessment: COPD\nexacerbation, improving."
    assert _refine(text, [_span(text, "COPD\nexacerbation,")]) == ["COPD", "exacerbation"]


def test_spans_never_keep_a_terminology_tag_and_a_tag_alone_goes() -> None:
    bronchitis = _span(MARKDOWN, "acute bronchitis (disorder)")
    tag = _span(MARKDOWN, "finding")
    assert _refine(MARKDOWN, [bronchitis, tag]) == ["acute bronchitis"]


def test_a_span_that_starts_inside_a_word_grows_to_the_whole_word() -> None:
    start, end = _span(MARKDOWN, "-time employment")
    assert _refine(MARKDOWN, [(start, end)]) == ["full-time employment"]


def test_headers_and_field_labels_are_never_entities() -> None:
    assert _refine(MARKDOWN, [_span(MARKDOWN, "Allergies\nNo")]) == []  # the header line; "No" has no entity left once cut
    assert _refine(DISCHARGE, [_span(DISCHARGE, "PAST MEDICAL HISTORY"), _span(DISCHARGE, "Allergies:")]) == []


def test_names_are_never_entities() -> None:
    numbered = _span(MARKDOWN, "Corrin41")
    titled = _span(DISCHARGE, "Mrs. Roe")
    field = _span(DISCHARGE, "Jane Roe")
    age_line = "John Smith is a 45 year-old man with asthma."
    kept = _refine(MARKDOWN, [numbered, _span(MARKDOWN, "acute bronchitis")])
    assert kept == ["acute bronchitis"]
    assert _refine(DISCHARGE, [titled, field, _span(DISCHARGE, "COPD exacerbation")]) == ["COPD exacerbation"]
    assert _refine(age_line, [_span(age_line, "John Smith"), _span(age_line, "asthma")]) == ["asthma"]


def test_a_span_across_inline_bullets_is_cut_at_each_bullet() -> None:
    text = "Problems: \u2022 asthma \u2022 COPD"
    assert _refine(text, [_span(text, "asthma \u2022 COPD")]) == ["asthma", "COPD"]


def test_the_batch_content_check_equals_the_plain_one_on_random_spans() -> None:
    import random

    from agents.clinical.layout import BatchText, has_content

    rng = random.Random(11)
    pieces = ["no", "No", "of the", "THE", "a", "and", "asthma", "x", "é", "中文", "K", "-", ",", "no,", "is", "their", "theirs"]
    spaces = [" ", "  ", "\t", "\n", "\u00a0", "\u2003", ""]
    for _ in range(60):
        texts = ["".join(rng.choice(pieces) + rng.choice(spaces) for _ in range(rng.randint(0, 25))) for _ in range(rng.randint(1, 5))]
        batch = BatchText.of(texts)
        n = len(batch.joined)
        start = np.array([rng.randint(0, n) for _ in range(80)], dtype=np.int64)
        end = np.minimum(start + np.array([rng.randint(0, 30) for _ in range(80)], dtype=np.int64), n)
        want = [has_content(batch.joined[a:b]) for a, b in zip(start.tolist(), end.tolist(), strict=True)]
        assert batch.has_content(start, end).tolist() == want
