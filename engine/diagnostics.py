"""Findings about a configuration, with positions, in text, JSON or GitHub form."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from engine.model import NOWHERE, Position

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding. ``code`` is stable (e.g. ``K101``); ``hint`` is optional advice.

    ``related`` is a second position when two places conflict (duplicate names).
    """

    code: str
    severity: Severity
    message: str
    pos: Position = NOWHERE
    hint: str = ""
    related: Position | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def text(self) -> str:
        s = f"{self.pos}: {self.code} {self.message}"
        if self.related is not None:
            s += f" (see also {self.related})"
        if self.hint:
            s += f" ({self.hint})"
        if self.severity == "warning":
            s = s.replace(f": {self.code} ", f": {self.code} warning: ", 1)
        return s

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["file"], d["line"], d["col"] = self.pos.file, self.pos.line, self.pos.col
        del d["pos"]
        if self.related is not None:
            d["related"] = str(self.related)
        return d

    def github(self) -> str:
        kind = "error" if self.is_error else "warning"
        msg = self.message + (f" ({self.hint})" if self.hint else "")
        msg = msg.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return (
            f"::{kind} file={self.pos.file},line={self.pos.line},col={self.pos.col},"
            f"title={self.code}::{msg}"
        )


def sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.pos.file, d.pos.line, d.pos.col, d.code)


def render(diagnostics: Iterable[Diagnostic], fmt: str = "text") -> str:
    """Render findings sorted by position. ``fmt``: text | json | github."""
    items = sorted(diagnostics, key=sort_key)
    if fmt == "json":
        return json.dumps([d.as_dict() for d in items], indent=2)
    if fmt == "github":
        return "\n".join(d.github() for d in items)
    return "\n".join(d.text() for d in items)
