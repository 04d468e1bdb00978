"""What every input-format reader yields."""

from __future__ import annotations

from typing import Any

#: (position in the file: line, note or message number; ClinicalNote fields, or the reason there is no note)
Record = tuple[int, dict[str, Any] | str]
