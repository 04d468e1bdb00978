"""Silver NER labels from the Synthea FHIR export: the patients' coded conditions found in their notes, split by patient."""

from __future__ import annotations

from streams.learning.silver_labels import label_note, silver_split
from tests.conftest import DATASETS


def test_every_whole_word_occurrence_of_a_condition_is_labelled_and_tags_are_not() -> None:
    text = "History of acute bronchitis (disorder), stress (finding). Distress. Acute bronchitis again."
    example = label_note(text, {"Acute bronchitis", "Stress"}, "Disease")
    assert [text[a:b] for a, b, _ in example.spans] == ["acute bronchitis", "stress", "Acute bronchitis"]  # not "Distress"
    assert all(label == "Disease" for _, _, label in example.spans)


def test_the_split_is_by_patient_and_the_notes_carry_their_conditions() -> None:
    split = silver_split(DATASETS / "synthea_fhir")
    assert (split.train_patients, split.dev_patients) == (6, 3)
    assert {e.text for e in split.train}.isdisjoint({e.text for e in split.dev})
    labelled = [e for e in split.train if e.spans]
    assert len(labelled) > 0.8 * len(split.train)
    mentions = {e.text[a:b].lower() for e in labelled for a, b, _ in e.spans}
    assert {"stress", "full-time employment"} <= mentions
    assert not any("(finding)" in m or "\n" in m for m in mentions)
