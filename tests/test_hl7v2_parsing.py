"""HL7 v2 through python-hl7: reference messages (the HL7 normative sample and a batch file from python-hl7's own
tests), batch envelopes, MLLP frames, character sets in hex escapes, and no field value in the library's logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streams.ingest.hl7v2 import read_hl7v2
from tests.conftest import REPO

HL7 = REPO / "tests" / "data" / "hl7v2"
REFERENCE = REPO / "tests" / "data" / "hl7v2_reference"

MDM = (
    "MSH|^~\\&|DICT|GEN|EHRSTREAM|GEN|20261120083000||MDM^T02^MDM_T02|MSG-U1|P|2.5.1|||AL|NE||UNICODE UTF-8\r"
    "PID|1||SS-1^^^GEN^SS~MRN-U1^^^GEN^MR||MÜLLER^JÖRG\r"
    "PV1|1|I|||||||||||||||||V-U1\r"
    "TXA|1|PN^Progress note|FT|20261120082500|||||9^M\\XC3BC\\LLER^J\\XC3B6\\RG|||DOC-U1||||||AU\r"
    "OBX|1|FT|11506-3^Progress note^LN||Fi\\XC3A8\\vre r\\XC3A9\\solue \\H\\today\\N\\.\\.br\\Plan: continue \\E\\ monitor|||||F\r"
)


def _notes(path: Path) -> list[dict[str, object] | str]:
    return [record for _, record in read_hl7v2(path)]


def test_reference_messages_are_parsed_and_rejected_for_the_right_reason() -> None:
    # the normative ORU^R01 carries numeric results (SN, FN) only; the batch file's message is an ADT^A04
    assert [str(r).split(":")[0] for r in _notes(REFERENCE / "normative_oru_r01.hl7")] == ["hl7_no_text"]
    assert [str(r).split(":")[0] for r in _notes(REFERENCE / "vinah_batch_adt_a04.hl7")] == ["hl7_unsupported"]


def test_batch_envelopes_and_mllp_frames_are_removed(tmp_path: Path) -> None:
    messages = (HL7 / "mdm_t02.hl7").read_text().replace("\r\n", "\r").replace("\n", "\r")
    batch = tmp_path / "batch.hl7"
    batch.write_text(f"FHS|^~\\&|DICT|GEN\rBHS|^~\\&|DICT|GEN\r{messages}BTS|2\rFTS|1\r")
    assert [r["note_id"] for r in _notes(batch) if isinstance(r, dict)] == ["DOC-HL7-0001", "DOC-HL7-0002"]
    framed = tmp_path / "framed.hl7"
    framed.write_bytes(b"".join(b"\x0b" + ("MSH" + m).encode() + b"\x1c\r" for m in messages.split("MSH")[1:]))
    assert [r["note_id"] for r in _notes(framed) if isinstance(r, dict)] == ["DOC-HL7-0001", "DOC-HL7-0002"]
    orphan = tmp_path / "orphan.hl7"
    orphan.write_text("PID|1||M1\r" + messages)
    records = _notes(orphan)  # segments before any MSH are a message of their own, rejected alone
    assert [str(r).split(":")[0] for r in records if isinstance(r, str)] == ["hl7_malformed"] and len(records) == 3


def test_hex_escapes_use_the_message_charset_and_formatting_is_text(tmp_path: Path) -> None:
    path = tmp_path / "utf8.hl7"
    path.write_text(MDM, encoding="utf-8")
    (note,) = _notes(path)
    assert isinstance(note, dict)
    assert note["text"] == "Fièvre résolue today.\nPlan: continue \\ monitor"
    assert (note["author"], note["patient_id"], note["encounter_id"]) == ("JöRG MüLLER", "MRN-U1", "V-U1")
    assert note["note_type"] == "progress_note" and note["created_at"] == "2026-11-20T08:25:00+00:00"
    latin = tmp_path / "latin1.hl7"
    latin.write_bytes(MDM.replace("UNICODE UTF-8", "8859/1").replace("\\XC3A8\\", "\\XE8\\").encode("utf-8"))
    assert str(_notes(latin)[0]["text"]).startswith("Fièvre")  # type: ignore[index]


def test_the_librarys_warnings_never_carry_field_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "odd.hl7"
    path.write_text(MDM.replace("\\.br\\", "\\C2842\\SECRET-VALUE"), encoding="utf-8")  # a charset switch python-hl7 cannot do
    with caplog.at_level(logging.DEBUG):
        (note,) = _notes(path)
    assert isinstance(note, dict) and "SECRET-VALUE" in str(note["text"])
    assert caplog.records, "python-hl7 is expected to warn about the charset switch"
    assert all("SECRET" not in r.getMessage() and "Fi" not in r.getMessage() for r in caplog.records)
