"""FHIR R4 clinical notes: DocumentReference resources, alone or in Bundles, to ClinicalNote fields.

Resources are validated by ``fhir.resources`` (its R4B models, the R4 technical correction; DocumentReference
is unchanged between R4 and R4B): a DocumentReference that fails validation is rejected as ``fhir_invalid``
with the file's note position, the Bundle entry and the first problems' paths (never their values). The
Bundle's own fields are validated too; its other resources are validated only when a note refers to them
(a Patient that does not validate is not used to resolve the subject, which then falls back to its reference).

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
* ``text``: every ``content.attachment`` with a ``text/*`` content type and inline base64 ``data``
  (base64 checked by the model), decoded with its charset (UTF-8 by default), joined by a blank line. Attachments given only by
  ``url`` are not fetched: a resource with no inline text is rejected with that reason.
* ``meta``: ``fhir_resource``, ``fhir_status``, ``fhir_doc_status``, ``loinc`` when present.

``status: entered-in-error`` resources are rejected (they are retractions, not notes). Other resources
in a Bundle (Patient, Encounter, Observation...) are skipped, not rejected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from streams.ingest.base import Record

LOINC = "http://loinc.org"
#: validation problems named in one rejection
MAX_PROBLEMS = 3


def invalid(kind: str, error: ValidationError, where: str = "") -> str:
    """A rejection naming the failing paths and what is wrong there, without the values (they may be PHI)."""
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or '(resource)'}: {e['msg'].splitlines()[0]}"
        for e in error.errors(include_input=False, include_url=False, include_context=False)
    ]
    more = f" (+{len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
    return f"fhir_invalid: {kind}{where} does not validate as FHIR R4: {'; '.join(problems[:MAX_PROBLEMS])}{more}"


class _Bundle:
    """Resources of one Bundle (raw JSON) by the references that may point at them."""

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


def _last_part(reference: str) -> str | None:
    return reference.rsplit("/", 1)[-1].removeprefix("urn:uuid:") or None


def _patient_id(resource: DocumentReference, bundle: _Bundle) -> str | None:
    subject = resource.subject
    if subject is None:
        return None
    reference = str(subject.reference or "")
    raw = bundle.resolve(reference) if reference else None
    if raw is not None and raw.get("resourceType") == "Patient":
        try:
            patient = Patient.model_validate(raw)
        except ValidationError:
            patient = None
        if patient is not None:
            identifiers = [i for i in patient.identifier or [] if i.value]
            for identifier in identifiers:
                if any(c.code == "MR" for c in (identifier.type.coding or [] if identifier.type else [])):
                    return str(identifier.value)
            if identifiers:
                return str(identifiers[0].value)
            if patient.id:
                return str(patient.id)
    if reference:
        return _last_part(reference)
    return str(subject.identifier.value) if subject.identifier and subject.identifier.value else None


def _encounter_id(resource: DocumentReference, bundle: _Bundle) -> str | None:
    encounters = (resource.context.encounter if resource.context else None) or []
    reference = str(encounters[0].reference or "") if encounters else ""
    if not reference:
        return None
    encounter = bundle.resolve(reference)
    if encounter is not None and encounter.get("id"):
        return str(encounter["id"])
    return _last_part(reference)


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:128]


def _note_type(resource: DocumentReference) -> tuple[str | None, str | None]:
    """(note type, LOINC code) from ``type``."""
    if resource.type is None:
        return None, None
    codings = sorted(resource.type.coding or [], key=lambda c: c.system != LOINC)  # LOINC first
    for coding in codings:
        loinc = coding.code if coding.system == LOINC else None
        if coding.display:
            return _snake(str(coding.display)), loinc
        if coding.code:
            return f"loinc_{coding.code}" if loinc else _snake(str(coding.code)), loinc
    return (_snake(str(resource.type.text)), None) if resource.type.text else (None, None)


def _charset(content_type: str) -> str:
    match = re.search(r"charset=([\w.-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else "utf-8"


def _text(resource: DocumentReference) -> str:
    """The note text, or raises ValueError with the reason there is none."""
    parts: list[str] = []
    by_url = False
    for item in resource.content or []:
        attachment = item.attachment
        content_type = str(attachment.contentType or "text/plain")
        if not content_type.lower().startswith("text/"):
            continue
        if attachment.data:
            try:
                parts.append(bytes(attachment.data).decode(_charset(content_type)))
            except (UnicodeDecodeError, LookupError):
                raise ValueError(f"attachment is not valid {_charset(content_type)} text") from None
        elif attachment.url:
            by_url = True
    if not parts:
        raise ValueError("no inline text attachment (attachments by url are not fetched)" if by_url else "no text/* attachment with data")
    return "\n\n".join(parts)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, date) else str(value)


def document_reference(raw: dict[str, Any], bundle: _Bundle, full_url: str | None = None, where: str = "") -> dict[str, Any] | str:
    """ClinicalNote fields from one DocumentReference (raw JSON), or the reason it cannot be a note."""
    try:
        resource = DocumentReference.model_validate(raw)
    except ValidationError as exc:
        return invalid("DocumentReference", exc, where)
    if resource.status == "entered-in-error":
        return "fhir_entered_in_error: the document was retracted (status entered-in-error)"
    try:
        text = _text(resource)
    except ValueError as exc:
        return f"fhir_no_text: {exc}"
    identifiers = [i for i in resource.identifier or [] if i.value]
    note_id = resource.id or (identifiers[0].value if identifiers else None) or full_url
    note_type, loinc = _note_type(resource)
    period = resource.context.period if resource.context else None
    created = resource.date or (period.start if period else None) or (resource.meta.lastUpdated if resource.meta else None)
    author = (resource.author[0].display or resource.author[0].reference) if resource.author else None
    meta = {"fhir_resource": "DocumentReference"}
    for key, value in (("fhir_status", resource.status), ("fhir_doc_status", resource.docStatus), ("loinc", loinc)):
        if value:
            meta[key] = str(value)
    fields: dict[str, Any] = {
        "note_id": str(note_id) if note_id else None,
        "patient_id": _patient_id(resource, bundle),
        "encounter_id": _encounter_id(resource, bundle),
        "note_type": note_type,
        "author": str(author) if author else None,
        "created_at": _iso(created),
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
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            yield "fhir_invalid: Bundle does not validate as FHIR R4: entry: must be a list of objects"
            return
        try:  # the Bundle's own fields; its resources are validated one by one below
            Bundle.model_validate({**document, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries]})
        except ValidationError as exc:
            yield invalid("Bundle", exc)
            return
        bundle = _Bundle(entries)
        for index, entry in enumerate(entries):
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "DocumentReference":
                yield document_reference(resource, bundle, entry.get("fullUrl"), where=f" (Bundle entry {index})")
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
