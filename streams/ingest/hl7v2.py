"""HL7 v2 clinical notes: MDM^T02 (document notification with content) and ORU^R01 (observation results)
to ClinicalNote fields.

Parsing follows the v2 encoding rules: segments end with CR (LF and CRLF are accepted too); MSH-1 is the
field separator and MSH-2 the component, repetition, escape and subcomponent characters; escape
sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, and ``\\.br\\`` in FT) are decoded. A file may hold several
messages, optionally MLLP-framed (``0x0B`` ... ``0x1C 0x0D``).

Mapping:

* ``patient_id``: PID-3, the repetition whose identifier type (CX-5) is ``MR``, else the first.
* ``encounter_id``: PV1-19 (visit number).
* ``text``: OBX-5 of every OBX whose value type (OBX-2) is ``TX`` or ``FT``, repetitions and segments
  joined by newlines, in order.
* MDM^T02: ``note_id`` TXA-12 (unique document number), else MSH-10; ``note_type`` TXA-2 (document type);
  ``created_at`` TXA-4 (activity time), else TXA-6 (origination), else MSH-7; ``author`` TXA-9 (name).
* ORU^R01: ``note_id`` OBR-3 (filler order number), else OBR-2, else MSH-10; ``note_type`` OBR-4 text
  (else its code); ``created_at`` OBR-7 (observation time), else MSH-7; ``author`` OBR-32 (principal
  result interpreter).
* ``meta``: ``hl7_message_type``, ``hl7_control_id``, ``hl7_sending_facility``.

Timestamps (``YYYYMMDD[HH[MM[SS[.S+]]]][+/-ZZZZ]``) without an offset are taken as UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from streams.ingest.base import Record

TEXT_TYPES = {"TX", "FT"}


class Message:
    """One parsed message: segments by name, fields by HL7 position (1-based; MSH-1 is the separator)."""

    def __init__(self, text: str) -> None:
        segments = [s for s in re.split(r"\r\n|\r|\n", text) if s.strip()]
        if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
            raise ValueError("message does not start with an MSH segment")
        self.field_sep = segments[0][3]
        encoding = segments[0][4:8]
        self.component, self.repetition, self.escape, self.subcomponent = encoding[0], encoding[1], encoding[2], encoding[3]
        self.segments: list[tuple[str, list[str]]] = []
        for segment in segments:
            parts = segment.split(self.field_sep)
            if parts[0] == "MSH":
                parts = ["MSH", self.field_sep, *parts[1:]]  # so MSH-n is parts[n] like every other segment
            self.segments.append((parts[0], parts))

    def all(self, name: str) -> list[list[str]]:
        return [fields for seg, fields in self.segments if seg == name]

    def first(self, name: str) -> list[str] | None:
        found = self.all(name)
        return found[0] if found else None

    def field(self, name: str, index: int) -> str:
        segment = self.first(name)
        return segment[index] if segment is not None and index < len(segment) else ""

    def components(self, value: str) -> list[str]:
        return value.split(self.component)

    def repetitions(self, value: str) -> list[str]:
        return value.split(self.repetition) if value else []

    def unescape(self, value: str) -> str:
        e = re.escape(self.escape)
        table = {
            "F": self.field_sep,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            ".br": "\n",
        }

        def replace(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in table:
                return table[code]
            if code.upper().startswith("X") and re.fullmatch(r"[Xx][0-9A-Fa-f]+", code):
                try:
                    return bytes.fromhex(code[1:]).decode("utf-8")
                except (ValueError, UnicodeDecodeError):
                    return ""
            return ""  # formatting commands (.sp, .in, \H\, \N\ ...) carry no text

        return re.sub(rf"{e}([^{e}]*){e}", replace, value)


def parse_timestamp(value: str) -> str | None:
    """An HL7 DTM as ISO 8601 (UTC when no offset is given), or None."""
    match = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?", value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    tz = UTC
    if offset:
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        moment = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=tz)
    except ValueError:
        return None
    return moment.isoformat()


def _patient_id(message: Message) -> str | None:
    ids = message.repetitions(message.field("PID", 3))
    chosen = next((r for r in ids if len(message.components(r)) > 4 and message.components(r)[4] == "MR"), ids[0] if ids else "")
    value = message.components(chosen)[0] if chosen else ""
    return message.unescape(value) or None


def _name(message: Message, value: str) -> str | None:
    """An XCN (id^family^given...) as 'given family', else its id."""
    parts = message.components(value)
    if len(parts) > 2 and (parts[1] or parts[2]):
        return message.unescape(" ".join(p for p in (parts[2], parts[1]) if p))
    return message.unescape(parts[0]) or None


def _text(message: Message) -> str:
    lines: list[str] = []
    for obx in message.all("OBX"):
        if len(obx) > 5 and obx[2] in TEXT_TYPES:
            lines.extend(message.unescape(rep) for rep in message.repetitions(obx[5]))
    return "\n".join(lines)


def note_from_message(message: Message) -> dict[str, Any] | str:
    """ClinicalNote fields from one MDM^T02 or ORU^R01 message, or the reason it cannot be a note."""
    msg_type = message.components(message.field("MSH", 9))
    kind = "^".join(msg_type[:2])
    control_id = message.field("MSH", 10)
    if kind not in ("MDM^T02", "ORU^R01"):
        return f"hl7_unsupported: message type {kind or '(none)'} (expected MDM^T02 or ORU^R01)"
    text = _text(message)
    if not text.strip():
        return "hl7_no_text: no OBX segment of value type TX or FT"
    if kind == "MDM^T02":
        note_id = message.components(message.field("TXA", 12))[0] or control_id
        note_type = message.components(message.field("TXA", 2))
        created = message.field("TXA", 4) or message.field("TXA", 6) or message.field("MSH", 7)
        author_field = message.repetitions(message.field("TXA", 9))
        author = _name(message, author_field[0]) if author_field else None
        type_name = (note_type[1] if len(note_type) > 1 and note_type[1] else note_type[0]) if note_type else ""
    else:
        note_id = message.components(message.field("OBR", 3))[0] or message.components(message.field("OBR", 2))[0] or control_id
        service = message.components(message.field("OBR", 4))
        type_name = (service[1] if len(service) > 1 and service[1] else service[0]) if service else ""
        created = message.field("OBR", 7) or message.field("MSH", 7)
        # OBR-32 (NDL): its first component is a CNN whose subcomponents are id & family & given
        interpreter = message.components(message.field("OBR", 32))[0].split(message.subcomponent)
        author = _name(message, message.component.join(interpreter)) if interpreter[0] or len(interpreter) > 1 else None
    meta = {"hl7_message_type": kind, "hl7_control_id": control_id}
    facility = message.components(message.field("MSH", 4))[0]
    if facility:
        meta["hl7_sending_facility"] = message.unescape(facility)
    fields: dict[str, Any] = {
        "note_id": message.unescape(note_id) or None,
        "patient_id": _patient_id(message),
        "encounter_id": message.unescape(message.components(message.field("PV1", 19))[0]) or None,
        "note_type": re.sub(r"[^a-z0-9]+", "_", message.unescape(type_name).lower()).strip("_")[:128] or None,
        "author": author,
        "created_at": parse_timestamp(created) if created else None,
        "text": text,
        "source": "hl7v2",
        "meta": meta,
    }
    if created and fields["created_at"] is None:
        return "hl7_bad_timestamp: the note's date/time is not an HL7 DTM"
    return {k: v for k, v in fields.items() if v is not None}


def split_messages(text: str) -> list[str]:
    """The messages of a file: MLLP frames removed, a new message at every MSH segment."""
    text = text.replace("\x0b", "").replace("\x1c", "")
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=[\r\n]))MSH", text)]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def read_hl7v2(path: Path) -> Iterator[Record]:
    """(message number, note fields or reason) for every message in an HL7 v2 file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = path.read_bytes().decode("latin-1")  # v2's default character set (MSH-18 empty) is ASCII; be lenient
    for number, raw in enumerate(split_messages(text), start=1):
        try:
            yield number, note_from_message(Message(raw))
        except (ValueError, IndexError) as exc:
            yield number, f"hl7_malformed: {exc}"
