"""Avro binary for many records at once, written from columns.

fastavro walks one record's dicts field by field (about 3 µs per entity of an Extraction, 2.5 µs per reason of a
ReviewTask): on the hot path that was the largest cost around the model. Here a batch's records are written column by
column with numpy: every field of every row is encoded in one vectorised step per field, and the rows' bytes are then
interleaved. Nested arrays are written bottom-up: the items' rows first, then :func:`array_blocks` groups them into
one Avro array per owning row, which is a column of its parent.

The bytes are exactly fastavro's (``schemaless_writer``): the tests compare both on random records of every schema
this is used for. Supported field types are what those schemas hold: string, int, long, float, double, boolean, enum,
``["null", T]`` unions, ``timestamp-millis`` longs and arrays of records; a schema with anything else is refused when
its writer is built, so a schema change cannot silently write the wrong bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = _EPOCH.replace(tzinfo=None)
#: the smallest zig-zag value that needs 2, 3, ... 10 bytes
_GROUP_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


@dataclass(frozen=True)
class Ragged:
    """``len(lengths)`` byte strings back to back in ``data`` (uint8)."""

    data: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def fixed(cls, values: np.ndarray, width: int) -> Ragged:
        """Rows of ``width`` bytes each: the bytes of ``values`` (contiguous), in order."""
        data = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        return cls(data, np.full(data.size // width, width, dtype=np.int64))

    def starts(self) -> np.ndarray:
        starts: np.ndarray = np.cumsum(self.lengths) - self.lengths
        return starts

    def items(self) -> list[bytes]:
        """Each row's bytes."""
        blob = self.data.tobytes()
        ends = np.cumsum(self.lengths)
        return [blob[a:b] for a, b in zip((ends - self.lengths).tolist(), ends.tolist(), strict=True)]


#: a column as pieces: row ``i`` is row ``i`` of every piece, one after another (joined by :func:`concat_rows` once)
Parts = list[Ragged]


def concat_rows(columns: Sequence[Ragged]) -> Ragged:
    """Row ``i`` of the result is row ``i`` of every column, one after another."""
    lengths = np.asarray(np.sum([c.lengths for c in columns], axis=0, dtype=np.int64))
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    at = np.cumsum(lengths) - lengths  # where each row's next piece goes
    for column in columns:
        if column.data.size:
            out[np.repeat(at - column.starts(), column.lengths) + np.arange(column.data.size)] = column.data
        at += column.lengths
    return Ragged(out, lengths)


def varints(values: Any) -> Ragged:
    """Avro ``int``/``long``: zig-zag, then 7 bits per byte, low group first."""
    v = np.asarray(values, dtype=np.int64)
    z = ((v << 1) ^ (v >> 63)).view(np.uint64)
    n = np.searchsorted(_GROUP_LIMITS, z, side="right") + 1  # how many 7-bit groups
    width = int(n.max()) if len(n) else 1
    if width == 1:  # every value below 64 in magnitude: one byte each (enums, counts, union branches)
        return Ragged(z.astype(np.uint8), n)
    place = np.arange(width)
    groups = ((z[:, None] >> (place * 7).astype(np.uint64)[None, :]) & np.uint64(0x7F)).astype(np.uint8)
    groups |= np.where(place[None, :] < n[:, None] - 1, np.uint8(0x80), np.uint8(0))
    return Ragged(groups[place[None, :] < n[:, None]], n)


def utf8(values: Sequence[str]) -> Parts:
    """Avro ``string``: the UTF-8 length, then the bytes."""
    encoded = [s.encode("utf-8") for s in values]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return [varints(lengths), Ragged(np.frombuffer(b"".join(encoded), dtype=np.uint8), lengths)]


def array_blocks(items: Ragged, owner: np.ndarray, n: int) -> Parts:
    """Per owning row ``0..n-1``, the Avro array of its items (``owner[k]``: item ``k``'s row, non-decreasing)."""
    owner = np.asarray(owner, dtype=np.int64)
    if len(owner) > 1 and bool((np.diff(owner) < 0).any()):
        raise ValueError("array items must come grouped by their owner, in owner order")
    if not len(owner):
        return empty_arrays(n)
    sizes = np.bincount(owner, weights=items.lengths, minlength=n)[:n].astype(np.int64)
    return arrays([Ragged(items.data, sizes)], np.bincount(owner, minlength=n)[:n])


def arrays(grouped: Parts, counts: np.ndarray) -> Parts:
    """Row ``i``: an Avro array of ``counts[i]`` items whose bytes are row ``i`` of ``grouped``, as fastavro writes
    one: the count, the items, a zero count to end (an empty array is the zero alone)."""
    counts = np.asarray(counts, dtype=np.int64)
    head = varints(counts)
    present = counts > 0
    head = Ragged(head.data[np.repeat(present, head.lengths)], head.lengths * present)
    n = len(counts)
    return [head, *grouped, Ragged(np.zeros(n, dtype=np.uint8), np.ones(n, dtype=np.int64))]


def empty_arrays(n: int) -> Parts:
    """``n`` empty Avro arrays: a zero count each."""
    return [Ragged(np.zeros(n, dtype=np.uint8), np.ones(n, dtype=np.int64))]


def _millis(value: Any) -> int:
    """fastavro's ``timestamp-millis`` of a datetime (aware, or naive taken as UTC); an int passes as it is."""
    if not isinstance(value, datetime):
        return int(value)
    delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


Writer = Callable[[Any], Parts]


def _floats(dtype: str) -> Writer:
    """Avro ``float`` (``<f4``) or ``double`` (``<f8``): little-endian IEEE 754, rounded to nearest as C's cast does."""
    kind = np.dtype(dtype)
    return lambda column: [Ragged.fixed(np.asarray(column, dtype=np.float64).astype(kind), kind.itemsize)]


def _booleans(column: Any) -> Parts:
    return [Ragged.fixed(np.asarray(column, dtype=bool).astype(np.uint8), 1)]


def _longs(column: Any) -> Parts:
    return [varints(column)]


def _nullable(inner: Writer) -> Writer:
    """``["null", T]``: branch 0 for None, else branch 1 and the value. A numpy masked array is a nullable number
    column (masked: null); any other column holds None for null."""

    def write(column: Any) -> Parts:
        if isinstance(column, np.ma.MaskedArray):
            present = ~np.ma.getmaskarray(column)
            values: Any = np.asarray(column.data)[present]
        else:
            present = np.fromiter((v is not None for v in column), dtype=bool, count=len(column))
            values = [v for v in column if v is not None]
        branch = Ragged.fixed(present.astype(np.uint8) * 2, 1)  # the zig-zag varint of 0 or 1
        return [branch, *(_spread(part, present) for part in inner(values))]

    return write


def _spread(part: Ragged, present: np.ndarray) -> Ragged:
    """``part``'s rows at the rows where ``present``; empty rows elsewhere."""
    lengths = np.zeros(len(present), dtype=np.int64)
    lengths[present] = part.lengths
    return Ragged(part.data, lengths)


def _blocks(column: Any) -> Parts:
    if not (isinstance(column, list) and all(isinstance(part, Ragged) for part in column)):
        raise TypeError("an array field's column is its rows' arrays, written by array_blocks or arrays")
    return column


class RecordWriter:
    """Rows of one Avro record schema (as fastavro parses it) written from columns, all rows at once."""

    def __init__(self, schema: Mapping[str, Any], named: dict[str, Any] | None = None) -> None:
        self.name: str = schema["name"]
        self._named = named if named is not None else {}
        self._named[self.name] = schema
        self._items: dict[str, RecordWriter] = {}
        self.fields: list[tuple[str, Writer]] = [(f["name"], self._compile(f["name"], f["type"])) for f in schema["fields"]]

    def item(self, field: str) -> RecordWriter:
        """The writer of the records in the array field ``field``."""
        return self._items[field]

    def rows(self, columns: Mapping[str, Any]) -> Ragged:
        """Every row's record; ``columns``: each field's values, one per row (every field is required)."""
        missing = [name for name, _ in self.fields if name not in columns]
        if missing:
            raise KeyError(f"{self.name}: no column for {', '.join(missing)}")
        parts = [part for name, write in self.fields for part in write(columns[name])]
        if len({len(p) for p in parts}) > 1:
            raise ValueError(f"{self.name}: columns of different lengths {sorted({len(p) for p in parts})}")
        return concat_rows(parts)

    def _compile(self, field: str, kind: Any) -> Writer:
        if isinstance(kind, list):
            if len(kind) == 2 and kind[0] == "null":
                return _nullable(self._compile(field, kind[1]))
            raise ValueError(f'{self.name}.{field}: only ["null", T] unions are written from columns, not {kind}')
        if isinstance(kind, str) and kind in self._named:
            kind = self._named[kind]
        if isinstance(kind, Mapping):
            logical, base = kind.get("logicalType"), kind["type"]
            if logical == "timestamp-millis" and base == "long":
                return lambda column: [varints(np.fromiter((_millis(v) for v in column), dtype=np.int64, count=len(column)))]
            if logical is not None:
                raise ValueError(f"{self.name}.{field}: logical type {logical} is not written from columns")
            if base == "enum":
                self._named[kind["name"]] = kind
                index = {s: i for i, s in enumerate(kind["symbols"])}
                return lambda column: [varints(np.fromiter((index[s] for s in column), dtype=np.int64, count=len(column)))]
            if base == "array":
                items = self._named.get(kind["items"], kind["items"]) if isinstance(kind["items"], str) else kind["items"]
                if not (isinstance(items, Mapping) and items.get("type") == "record"):
                    raise ValueError(f"{self.name}.{field}: only arrays of records are written from columns")
                self._items[field] = RecordWriter(items, self._named)
                return _blocks
            if base in ("record", "map", "fixed"):
                raise ValueError(f"{self.name}.{field}: type {base} is not written from columns")
            return self._compile(field, base)
        primitives: dict[str, Writer] = {
            "string": utf8,
            "int": _longs,
            "long": _longs,
            "float": _floats("<f4"),
            "double": _floats("<f8"),
            "boolean": _booleans,
        }
        if kind not in primitives:
            raise ValueError(f"{self.name}.{field}: type {kind} is not written from columns")
        return primitives[kind]
