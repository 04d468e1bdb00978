"""FHIR R4 clinical notes: DocumentReference resources, alone or in Bundles, to ClinicalNote fields.

Mapping (FHIR R4 DocumentReference, as US Core and Synthea produce it):

* ``note_id``: the resource's ``id``; else its first ``identifier.value``; else the Bundle entry's ``fullUrl``.
* ``patient_id``: ``subject`` resolved: a Patient in the same Bundle (by ``fullUrl`` or ``Patient/id``)
  gives its MR identifier (``identifier.type.coding.code == "MR"``), else its first identifier, else its
  id; an unresolved ``Patient/123`` gives ``123``; ``subject.identifier.value`` is used when there is no
  reference.
* ``encounter_id``: ``context.encounter[0]`` resolved the same way (the Encounter's id).
* ``note_type``: ``type.coding`` (LOINC preferred): the display as a snake_case name
  (``Progress note`` -> ``progress_note``), else ``loinc_<code>``; else ``type.text``.
* ``created_at``: ``date``; else ``context.period.start``; else ``meta.lastUpdated``.
* ``author``: ``author[0].display`` or its reference.
* ``text``: every ``content.attachment`` with a ``text/*`` content type and inline base64 ``data``,
  decoded with its charset (UTF-8 by default), joined by a blank line. Attachments given only by
  ``url`` are not fetched: a resource with no inline text is rejected with that reason.
* ``meta``: ``fhir_resource``, ``fhir_status``, ``fhir_doc_status``, ``loinc`` when present.

``status: entered-in-error`` resources are rejected (they are retractions, not notes). Other resources
in a Bundle (Patient, Encounter, Observation...) are skipped, not rejected.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.ingest.base import Record

LOINC = "http://loinc.org"


class _Bundle:
    """Resources of one Bundle by the references that may point at them."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_ref: dict[str, dict[str, Any]] = {}
        for entry in entries:
            resource = entry.get("resource") or {}
            if entry.get("fullUrl"):
                self.by_ref[str(entry["fullUrl"])] = resource
            if resource.get("resourceType") and resource.get("id"):
                self.by_ref[f"{resource['resourceType']}/{resource['id']}"] = resource

    def resolve(self, reference: str) -> dict[str, Any] | None:
        return self.by_ref.get(reference) or self.by_ref.get(reference.split("/_history/")[0])


def _patient_id(subject: dict[str, Any], bundle: _Bundle) -> str | None:
    reference = str(subject.get("reference") or "")
    patient = bundle.resolve(reference) if reference else None
    if patient is not None:
        identifiers = patient.get("identifier") or []
        for identifier in identifiers:
            codes = [c.get("code") for c in (identifier.get("type") or {}).get("coding") or []]
            if "MR" in codes and identifier.get("value"):
                return str(identifier["value"])
        if identifiers and identifiers[0].get("value"):
            return str(identifiers[0]["value"])
        if patient.get("id"):
            return str(patient["id"])
    if reference:
        return reference.rsplit("/", 1)[-1].removeprefix("urn:uuid:") or None
    value = (subject.get("identifier") or {}).get("value")
    return str(value) if value else None


def _encounter_id(context: dict[str, Any], bundle: _Bundle) -> str | None:
    encounters = context.get("encounter") or []
    if not encounters:
        return None
    reference = str(encounters[0].get("reference") or "")
    encounter = bundle.resolve(reference) if reference else None
    if encounter is not None and encounter.get("id"):
        return str(encounter["id"])
    return reference.rsplit("/", 1)[-1].removeprefix("urn:uuid:") or None


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:128]


def _note_type(doc_type: dict[str, Any]) -> tuple[str | None, str | None]:
    """(note type, LOINC code) from ``type``."""
    codings = doc_type.get("coding") or []
    codings = sorted(codings, key=lambda c: c.get("system") != LOINC)  # LOINC first
    for coding in codings:
        loinc = coding.get("code") if coding.get("system") == LOINC else None
        if coding.get("display"):
            return _snake(str(coding["display"])), loinc
        if coding.get("code"):
            return f"loinc_{coding['code']}" if loinc else _snake(str(coding["code"])), loinc
    text = doc_type.get("text")
    return (_snake(str(text)), None) if text else (None, None)


def _charset(content_type: str) -> str:
    match = re.search(r"charset=([\w.-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else "utf-8"


def _text(content: list[dict[str, Any]]) -> str:
    """The note text, or raises ValueError with the reason there is none."""
    parts: list[str] = []
    by_url = False
    for item in content:
        attachment = item.get("attachment") or {}
        content_type = str(attachment.get("contentType") or "text/plain")
        if not content_type.lower().startswith("text/"):
            continue
        if attachment.get("data"):
            try:
                raw = base64.b64decode(str(attachment["data"]), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("attachment data is not valid base64") from None
            try:
                parts.append(raw.decode(_charset(content_type)))
            except (UnicodeDecodeError, LookupError):
                raise ValueError(f"attachment is not valid {_charset(content_type)} text") from None
        elif attachment.get("url"):
            by_url = True
    if not parts:
        raise ValueError("no inline text attachment (attachments by url are not fetched)" if by_url else "no text/* attachment with data")
    return "\n\n".join(parts)


def document_reference(resource: dict[str, Any], bundle: _Bundle, full_url: str | None = None) -> dict[str, Any] | str:
    """ClinicalNote fields from one DocumentReference, or the reason it cannot be a note."""
    if resource.get("status") == "entered-in-error":
        return "fhir_entered_in_error: the document was retracted (status entered-in-error)"
    try:
        text = _text(resource.get("content") or [])
    except ValueError as exc:
        return f"fhir_no_text: {exc}"
    identifiers = resource.get("identifier") or []
    note_id = resource.get("id") or (identifiers[0].get("value") if identifiers else None) or full_url
    note_type, loinc = _note_type(resource.get("type") or {})
    context = resource.get("context") or {}
    created = resource.get("date") or (context.get("period") or {}).get("start") or (resource.get("meta") or {}).get("lastUpdated")
    authors = resource.get("author") or []
    author = (authors[0].get("display") or authors[0].get("reference")) if authors else None
    meta = {"fhir_resource": "DocumentReference"}
    for key, value in (("fhir_status", resource.get("status")), ("fhir_doc_status", resource.get("docStatus")), ("loinc", loinc)):
        if value:
            meta[key] = str(value)
    fields: dict[str, Any] = {
        "note_id": note_id,
        "patient_id": _patient_id(resource.get("subject") or {}, bundle),
        "encounter_id": _encounter_id(context, bundle),
        "note_type": note_type,
        "author": author,
        "created_at": created,
        "text": text,
        "source": "fhir",
        "meta": meta,
    }
    return {k: v for k, v in fields.items() if v is not None}


def notes_from_resource(document: dict[str, Any]) -> Iterator[dict[str, Any] | str]:
    """Every note in a parsed FHIR JSON document: a Bundle (any type) or a single DocumentReference."""
    kind = document.get("resourceType")
    if kind == "DocumentReference":
        yield document_reference(document, _Bundle([]))
    elif kind == "Bundle":
        entries = document.get("entry") or []
        bundle = _Bundle(entries)
        for entry in entries:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "DocumentReference":
                yield document_reference(resource, bundle, entry.get("fullUrl"))
    else:
        yield f"fhir_unsupported: resourceType {kind!r} (expected Bundle or DocumentReference)"


def read_fhir(path: Path) -> Iterator[Record]:
    """(position, note fields or reason) for every DocumentReference in a FHIR JSON file (a Bundle, a resource,
    or NDJSON: one resource per line). Positions count the file's notes from 1."""
    raw = path.read_bytes()
    try:
        documents = [json.loads(raw)]
    except (json.JSONDecodeError, UnicodeDecodeError):
        documents = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                documents.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                documents.append(f"invalid_json: line {number}: {reason}")
    position = 0
    for document in documents:
        if isinstance(document, str) or not isinstance(document, dict):
            position += 1
            yield position, document if isinstance(document, str) else "invalid_json: not a JSON object"
            continue
        for note in notes_from_resource(document):
            position += 1
            yield position, note
