"""Records for people and for scripts: ``--format table|json|csv`` (SPEC section 3).

Without ``--format`` a terminal gets a table at its full width (long cells wrap,
nothing is cut) and a pipe gets CSV. Times are shown in ``[kaiser] tz`` in one
format, ISO 8601 with the zone's offset (``2026-06-01 10:00:00.250+02:00``),
whether they come from the running server (JSON text) or the store file (datetimes).
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO
from zoneinfo import ZoneInfo

FORMATS = ("table", "json", "csv")
_TS = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d(:?\d\d)?)?$")


def choose(fmt: str | None, stream: TextIO | None = None) -> str:
    """The format to print in: the one asked for, else table on a terminal, csv elsewhere."""
    if fmt:
        return fmt
    stream = stream or sys.stdout
    try:
        return "table" if stream.isatty() else "csv"
    except (AttributeError, ValueError):
        return "csv"


def zone(tz: str) -> dt.tzinfo:
    try:
        return ZoneInfo(tz)
    except Exception:  # a bad tz is the loader's error to report; print UTC meanwhile
        return dt.UTC


def when(value: float | dt.datetime, tz: dt.tzinfo) -> str:
    """A time (Unix seconds or a datetime; naive ones are UTC) in ``tz``, ISO 8601."""
    if isinstance(value, dt.datetime):
        t = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    else:
        t = dt.datetime.fromtimestamp(float(value), dt.UTC)
    t = t.astimezone(tz)
    return t.isoformat(sep=" ", timespec="milliseconds" if t.microsecond else "seconds")


def cell(value: Any, tz: dt.tzinfo) -> Any:
    """A value as printed: times in ``tz``, everything else unchanged."""
    if isinstance(value, dt.datetime):
        return when(value, tz)
    if isinstance(value, str) and _TS.match(value):
        try:
            return when(dt.datetime.fromisoformat(value.replace("Z", "+00:00")), tz)
        except ValueError:
            return value
    return value


def emit(columns: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str, tz: dt.tzinfo,
         out: TextIO | None = None, *, title: str | None = None) -> None:
    """Print records as a table, JSON (a list of objects) or CSV (a header line first)."""
    out = out or sys.stdout
    data = [[cell(v, tz) for v in row] for row in rows]
    if fmt == "json":
        out.write(json.dumps([dict(zip(columns, r, strict=False)) for r in data], indent=2,
                             ensure_ascii=False, default=str) + "\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(columns)
        for r in data:
            w.writerow(["" if v is None else v for v in r])
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(*columns, title=title, show_lines=False)
        for c in t.columns:
            c.overflow = "fold"  # wrap long cells instead of cutting them with "…"
        for r in data:
            t.add_row(*["" if v is None else str(v) for v in r])
        Console(file=out, highlight=False, soft_wrap=False).print(t)
    out.flush()


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``; did you mean a or b?`` for the closest known names, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""
