"""The assertion lexicon, read from ``assertion_rules.toml`` (the file says how the rules work; edit it there).

:func:`load_lexicon` returns it as plain rows, once per process (``agents.clinical.assertion`` compiles them)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

#: the categories that assert something, as the rules file names them
CATEGORIES = ("absent", "possible", "hypothetical", "family", "historical")


@dataclass(frozen=True)
class CueRow:
    phrase: str
    category: str
    forward: bool
    backward: bool
    #: the most words between the cue and the mention it governs (``None``: to the sentence's end)
    cap: int | None


@dataclass(frozen=True)
class Lexicon:
    cues: list[CueRow]
    pseudo: list[str]
    recent: list[str]
    stop: list[str]


@cache
def load_lexicon() -> Lexicon:
    data = tomllib.loads(resources.files("agents.clinical").joinpath("assertion_rules.toml").read_text(encoding="utf-8"))
    cues = []
    for category in CATEGORIES:
        default = data[category].get("default_cap")
        for group in data[category]["cues"]:
            direction = group["direction"]
            if direction not in ("F", "B", "X"):
                raise ValueError(f"assertion_rules.toml: [{category}] direction must be F, B or X, not {direction!r}")
            cap = group.get("cap", default)
            cues += [CueRow(p, category, direction in "FX", direction in "BX", cap) for p in group["phrases"]]
    pseudo = data["pseudo"]
    companions = [
        f"{verb} {whose}{relative}"
        for verb in pseudo["companion_verbs"]
        for whose in pseudo["companion_whose"]
        for relative in pseudo["companion_relatives"]
    ]
    return Lexicon(cues, [*pseudo["phrases"], *companions], data["recent"]["phrases"], data["stop"]["phrases"])
