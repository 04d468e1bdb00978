"""HL7 v2 clinical notes: MDM^T02 (document notification with content) and ORU^R01 (observation results)
to ClinicalNote fields, parsed by python-hl7 (``hl7``).

python-hl7 does the v2 encoding rules: MSH-1 and MSH-2 give the separators, fields, repetitions, components
and subcomponents are split by them, and escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\Xhh..\\``,
``\\.br\\`` and the other formatting commands of chapter 2.10) are decoded by its ``unescape``. This module
adds what a file needs before the library sees it: segments end with CR, and LF or CRLF are taken as CR;
MLLP frames (``0x0B`` ... ``0x1C 0x0D``) and batch envelopes (FHS/BHS/BTS/FTS) are removed; a new message
starts at every MSH, so one bad message is rejected alone.

Two of the library's defaults are overridden through its application map (``app_map``), not re-implemented:
``\\Xhh..\\`` is decoded as bytes of the message's character set (UTF-8 unless MSH-18 names another; the
library maps each byte to one code point, which garbles UTF-8), and line-breaking commands (``\\.br\\``,
``\\.sp\\``, ``\\.ce\\``) become LF rather than CR, since CR is the segment terminator.

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

Timestamps (``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``, python-hl7's ``parse_datetime``) without an offset
are taken as UTC.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import hl7.util
from hl7.datatypes import parse_datetime
from hl7.exceptions import ParseException

from streams.ingest.base import Record

TEXT_TYPES = {"TX", "FT"}
#: segments of a batch file's envelope (chapter 2.10.3): not part of any message
ENVELOPE = ("FHS", "BHS", "BTS", "FTS")
#: MSH-18 values (HL7 table 0211) that name a Python codec other than their own spelling
CHARSETS = {"UNICODE UTF-8": "utf-8", "UNICODE": "utf-16", "8859/1": "latin-1", "8859/15": "iso8859-15", "ASCII": "ascii"}


class _RedactValues(logging.Filter):
    """python-hl7 logs the field it could not unescape; a field is patient data, so its arguments are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = "python-hl7 reported a problem with a field (its value is withheld)", None
        return True


if not any(isinstance(f, _RedactValues) for f in hl7.util.logger.filters):
    hl7.util.logger.addFilter(_RedactValues())


class _EscapeMap(dict[str, str]):
    """python-hl7's application map: line breaks as LF, hex escapes decoded in the message's charset."""

    def __init__(self, charset: str) -> None:
        super().__init__({".br": "\n", ".sp": "\n", ".ce": "\n", "H": "", "N": ""})
        self.charset = charset

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or (isinstance(key, str) and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", key) is not None)

    def __missing__(self, key: str) -> str:
        return bytes.fromhex(key[1:]).decode(self.charset, errors="replace")


class Message:
    """One message parsed by python-hl7, with the lookups the mapping needs ("" for what is absent)."""

    def __init__(self, text: str) -> None:
        if not text.startswith("MSH") or len(text) < 8:
            raise ValueError("message does not start with an MSH segment")
        try:
            self.parsed = hl7.parse(text)
        except ParseException as exc:
            raise ValueError(str(exc).split(":")[0]) from None
        self.escapes = _EscapeMap("utf-8")
        charset = self.get("MSH.F18") or "UNICODE UTF-8"
        charset = CHARSETS.get(charset.upper(), charset)
        try:
            codecs.lookup(charset)
        except LookupError:
            charset = "utf-8"
        self.escapes = _EscapeMap(charset)

    def get(self, key: str) -> str:
        """One leaf value, unescaped, by python-hl7's accessor key (``PID.F3.R1.C1``; absent parts are "").

        Walks the parsed tree as the library's ``extract_field`` does (a leaf reached early answers for
        position 1 below it), but unescapes with this message's escape map."""
        accessor = hl7.Accessor.parse_key(key)
        try:
            node: Any = self.parsed.segments(accessor.segment)(accessor.segment_num or 1)
        except (KeyError, IndexError):
            return ""
        path = [accessor.field_num or 1, accessor.repeat_num or 1, accessor.component_num or 1, accessor.subcomponent_num or 1]
        if accessor.segment == "MSH" and path[0] in (1, 2):
            return str(node[path[0]])
        for depth, index in enumerate(path):
            if isinstance(node, str):
                return self.unescape(node) if all(i == 1 for i in path[depth:]) else ""
            offset = 0 if depth == 0 else 1  # a segment's item 0 is its name; below it positions are 1-based
            if index - offset >= len(node):
                return ""
            node = node[index - offset]
        return self.unescape(str(node))

    def repetitions(self, field: Any) -> list[str]:
        """A field's repetitions as raw (escaped) strings."""
        if isinstance(field, hl7.Field) and field and isinstance(field[0], hl7.Repetition):
            return [str(rep) for rep in field]
        return [str(field)] if str(field) else []

    def unescape(self, value: str) -> str:
        return str(self.parsed.unescape(value, app_map=self.escapes))

    def segments(self, name: str) -> list[Any]:
        try:
            return list(self.parsed.segments(name))
        except KeyError:
            return []


def parse_timestamp(value: str) -> str | None:
    """An HL7 DTM as ISO 8601 (UTC when no offset is given), or None."""
    try:
        moment = parse_datetime(value.strip())
    except (ValueError, TypeError):
        return None
    if not isinstance(moment, datetime):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _patient_id(message: Message) -> str | None:
    pid = message.segments("PID")
    count = len(message.repetitions(pid[0][3])) if pid and len(pid[0]) > 3 else 0
    chosen = next((r for r in range(1, count + 1) if message.get(f"PID.F3.R{r}.C5") == "MR"), 1)
    return message.get(f"PID.F3.R{chosen}.C1") or None


def _name(message: Message, key: str) -> str | None:
    """An XCN (id^family^given...) or CNN (id&family&given) as 'given family', else its id."""
    family, given = message.get(f"{key}2"), message.get(f"{key}3")
    if family or given:
        return " ".join(p for p in (given, family) if p)
    return message.get(f"{key}1") or None


def _text(message: Message) -> str:
    lines: list[str] = []
    for obx in message.segments("OBX"):
        if len(obx) > 5 and str(obx[2]) in TEXT_TYPES:
            lines.extend(message.unescape(rep) for rep in message.repetitions(obx[5]))
    return "\n".join(lines)


def note_from_message(message: Message) -> dict[str, Any] | str:
    """ClinicalNote fields from one MDM^T02 or ORU^R01 message, or the reason it cannot be a note."""
    kind = "^".join(p for p in (message.get("MSH.F9.R1.C1"), message.get("MSH.F9.R1.C2")) if p)
    control_id = message.get("MSH.F10")
    if kind not in ("MDM^T02", "ORU^R01"):
        return f"hl7_unsupported: message type {kind or '(none)'} (expected MDM^T02 or ORU^R01)"
    text = _text(message)
    if not text.strip():
        return "hl7_no_text: no OBX segment of value type TX or FT"
    if kind == "MDM^T02":
        note_id = message.get("TXA.F12.R1.C1") or control_id
        type_name = message.get("TXA.F2.R1.C2") or message.get("TXA.F2.R1.C1")
        created = message.get("TXA.F4") or message.get("TXA.F6") or message.get("MSH.F7")
        author = _name(message, "TXA.F9.R1.C")
    else:
        note_id = message.get("OBR.F3.R1.C1") or message.get("OBR.F2.R1.C1") or control_id
        type_name = message.get("OBR.F4.R1.C2") or message.get("OBR.F4.R1.C1")
        created = message.get("OBR.F7") or message.get("MSH.F7")
        author = _name(message, "OBR.F32.R1.C1.S")  # NDL: its first component is a CNN, id & family & given
    meta = {"hl7_message_type": kind, "hl7_control_id": control_id}
    facility = message.get("MSH.F4.R1.C1")
    if facility:
        meta["hl7_sending_facility"] = facility
    fields: dict[str, Any] = {
        "note_id": note_id or None,
        "patient_id": _patient_id(message),
        "encounter_id": message.get("PV1.F19.R1.C1") or None,
        "note_type": re.sub(r"[^a-z0-9]+", "_", type_name.lower()).strip("_")[:128] or None,
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
    """The messages of a file as CR-terminated segments: MLLP frames and batch envelopes removed, a new
    message at every MSH. Segments before the first MSH become a message of their own, to be rejected."""
    segments = [s.strip() for s in re.split(r"\r\n|\r|\n", text.replace("\x0b", "").replace("\x1c", ""))]
    messages: list[list[str]] = []
    for segment in segments:
        if not segment or segment[:3] in ENVELOPE:
            continue
        if segment.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(segment)
    return ["\r".join(m) for m in messages]


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
