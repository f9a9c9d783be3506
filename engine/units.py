"""Parsing of durations, rates and times of day as written in YAML and TOML."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_FACTOR = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|min|h|d)\s*$")
_PER = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: object) -> float:
    """``500ms``, ``30s``, ``5m``, ``2h``, ``1d`` or a number of seconds -> seconds.

    Raises ValueError with a sentence for people.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 5m or 2h, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _FACTOR[m.group(2)]
    raise ValueError(f"expected a duration like 500ms, 30s, 5m, 2h or 1d, got {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact YAML spelling of a duration."""
    for unit in ("d", "h", "m", "s"):
        f = _FACTOR[unit]
        if seconds >= f and seconds % f == 0:
            return f"{int(seconds // f)}{unit}"
    if seconds < 1 and (seconds * 1000) == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def parse_rate(value: object) -> tuple[int, float]:
    """``6/h`` -> (6, 3600.0): a count per window of seconds."""
    if isinstance(value, str):
        m = _RATE.match(value)
        if m:
            return int(m.group(1)), _PER[m.group(2)]
    raise ValueError(f"expected a rate like 6/h or 10/m, got {value!r}")


def parse_time_of_day(value: object) -> int:
    """``"06:30"`` -> minutes after midnight (390)."""
    if isinstance(value, str):
        m = _HHMM.match(value.strip())
        if m:
            return int(m.group(1)) * 60 + int(m.group(2))
    raise ValueError(f"expected a time of day \"HH:MM\" (00:00-23:59), got {value!r}")


def parse_weekday(value: object) -> int:
    """``mon`` .. ``sun`` (any case, or full names) -> 0..6."""
    if isinstance(value, str):
        v = value.strip().lower()[:3]
        if v in WEEKDAYS and value.strip().lower() in (v, _FULL[v]):
            return WEEKDAYS.index(v)
    raise ValueError(f"expected a weekday (mon, tue, wed, thu, fri, sat, sun), got {value!r}")


_FULL = {
    "mon": "monday", "tue": "tuesday", "wed": "wednesday", "thu": "thursday",
    "fri": "friday", "sat": "saturday", "sun": "sunday",
}
