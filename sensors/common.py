"""Helpers shared by the sensor libraries: ADC conversion, quality grades, numbers.

Quality grades, best first: ``excellent``, ``good``, ``fair``, ``poor``, ``bad``.
The firmware may also send ``stale`` (as bad as ``bad``) and, in legacy firmware,
``error`` (treated as ``bad``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sensors.registry import Processed, Quantity

ADC_MAX = 4095.0
ADC_VREF = 3.3

GRADES: tuple[str, ...] = ("excellent", "good", "fair", "poor", "bad")
#: rank of every quality string the firmware or a library may produce; higher is worse
RANK: dict[str, int] = {
    "excellent": 0, "good": 1, "fair": 2, "poor": 3, "bad": 4, "stale": 5, "error": 4,
}


def worse(a: str | None, b: str | None) -> str:
    """The worse of two grades (None counts as no opinion). ``error`` reads as ``bad``."""
    if a is None:
        a = b or "good"
    if b is None:
        b = a
    ra, rb = RANK.get(a, 4), RANK.get(b, 4)
    q = a if ra >= rb else b
    return "bad" if q == "error" or q not in RANK else q


def adc_volts(raw: float) -> float | None:
    """12-bit ADC count -> volts (V = raw / 4095 * 3.3); None when outside 0..4095."""
    if raw < 0.0 or raw > ADC_MAX:
        return None
    return raw / ADC_MAX * ADC_VREF


def at_rail(raw: float) -> bool:
    """An ADC count pinned at 0 or 4095: open or shorted probe, or a saturated input."""
    return raw <= 0.0 or raw >= ADC_MAX


def number(table: Mapping[str, float], key: str, default: float) -> float:
    """``table[key]`` as a finite float, else ``default``. Raises ValueError on junk."""
    v = table.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{key} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{key} must be finite, got {v!r}")
    return f


def bad(q: Quantity, value: float = 0.0) -> Processed:
    """An unusable reading. Keeps a finite value for diagnostics, else 0.0."""
    return Processed(value if math.isfinite(value) else 0.0, q.unit, "bad")


def clamped(q: Quantity, value: float, grade: str) -> Processed:
    """Clamp to the quantity's range; a value that needed clamping is ``poor``."""
    if not math.isfinite(value):
        return bad(q)
    if value < q.min:
        return Processed(q.min, q.unit, worse(grade, "poor"))
    if value > q.max:
        return Processed(q.max, q.unit, worse(grade, "poor"))
    return Processed(value, q.unit, grade)


def ranged(q: Quantity, value: float, grade: str, best: tuple[float, float] | None = None) -> Processed:
    """No clamping: outside the quantity's range is ``bad``; inside ``best`` is
    ``excellent`` (when ``grade`` is ``good``)."""
    if not math.isfinite(value) or value < q.min or value > q.max:
        return bad(q, value)
    if best is not None and grade == "good" and best[0] <= value <= best[1]:
        grade = "excellent"
    return Processed(value, q.unit, grade)


def word16(raw: float) -> int | None:
    """A 16-bit unsigned word (0..65535, integral) or None."""
    if raw < 0.0 or raw > 65535.0 or raw != int(raw):
        return None
    return int(raw)
