"""Sensor libraries: raw ESP32 values -> physical values with unit and quality.

    >>> import sensors
    >>> sensors.process("DS18B20", 344)
    Processed(value=21.5, unit='°C', quality='excellent')

``process`` never raises for a bad reading (NaN, inf, strings, a negative or
> 4095 ADC count, ...): it answers quality ``bad`` with a finite value. It raises
``engine.errors.UnknownSensorType`` (naming the type) for a type no library
knows. See docs/sensors.md for every type, its formula and its calibration.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.errors import UnknownSensorType
from sensors.common import GRADES, RANK, worse
from sensors.registry import Processed, Quantity, SensorType, all_names, register, resolve, types

__all__ = [
    "GRADES",
    "RANK",
    "Processed",
    "Quantity",
    "SensorType",
    "all_names",
    "grade",
    "plain",
    "process",
    "quantity_of",
    "register",
    "resolve",
    "types",
    "worse",
]

_EMPTY: Mapping[str, float] = {}


def plain(value: float) -> float | None:
    """A float whose repr needs no exponent (the rule network's JSON parser refuses
    ``1e-05`` and non-finite numbers): six decimals, |x| < 1e-4 -> 0.0, None when
    not finite or |x| >= 1e15."""
    if value - value != 0.0 or not -1e15 < value < 1e15:  # NaN, infinite, too large
        return None
    value = round(value, 6)
    return 0.0 if -1e-4 < value < 1e-4 else value


def quantity_of(sensor_type: str, quantity: str | None = None) -> tuple[SensorType, Quantity]:
    """The library and the quantity a type name (and optional quantity name) means.

    ``sht31_humidity`` -> (sht31, humidity); ``sht31`` -> (sht31, temperature), its
    first quantity. Raises UnknownSensorType for an unknown type or quantity.
    """
    st, q = resolve(sensor_type)
    name = quantity or q
    if name is None:
        return st, st.quantities[0]
    for qq in st.quantities:
        if qq.name == name:
            return st, qq
    raise UnknownSensorType(f"sensor type {st.name!r} has no quantity {name!r}")


def process(sensor_type: str, raw: object, calibration: Mapping[str, float] | None = None,
            params: Mapping[str, float] | None = None, *, quantity: str | None = None) -> Processed:
    """Turn a raw reading into a physical value with unit and quality.

    ``raw``: what the firmware sent (ADC count, register word, ppm, ...).
    ``calibration``: the device map's ``calibration:`` block for this sensor.
    ``params``: runtime inputs such as ``temperature`` (degC) or ``window`` (s).
    ``quantity``: which value of a multi-value chip (default: what the type name
    says, else the chip's first). Never raises for bad input; raises
    UnknownSensorType for an unknown type.
    """
    st, q = quantity_of(sensor_type, quantity)
    return run(st, q, raw, calibration, params)


def run(st: SensorType, q: Quantity, raw: object, calibration: Mapping[str, float] | None = None,
        params: Mapping[str, float] | None = None) -> Processed:
    """``process`` for an already resolved library and quantity (the router's hot path)."""
    c = raw.__class__
    if c is float:
        r: float = raw  # type: ignore[assignment]
    elif c is int or (isinstance(raw, int | float) and c is not bool):
        try:
            r = float(raw)  # type: ignore[arg-type]
        except OverflowError:
            return Processed(0.0, q.unit, "bad")
    else:
        return Processed(0.0, q.unit, "bad")
    if r - r != 0.0:  # NaN or infinite
        return Processed(0.0, q.unit, "bad")
    try:
        p = st.process(r, calibration or _EMPTY, params or _EMPTY, q.name)
    except (ValueError, TypeError, ArithmeticError, KeyError):
        # junk calibration or params: a bad reading, not a crash
        return Processed(0.0, q.unit, "bad")
    value = p.value
    if value.__class__ is not float:
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            return Processed(0.0, q.unit, "bad")
    v = plain(value)
    if v is None:
        return Processed(0.0, q.unit, "bad")
    if p.quality not in RANK:
        return Processed(v, q.unit, "bad")
    if v == value and value.__class__ is float and p.unit is q.unit:
        return p
    return Processed(v, p.unit, p.quality)


def grade(sensor_type: str, value: object, *, quantity: str | None = None) -> Processed:
    """Grade a value the firmware already converted (raw_mode false): unit from the
    library, ``bad`` outside the quantity's valid range, else ``good``.

    Never raises for a bad value; raises UnknownSensorType for an unknown type.
    """
    return grade_quantity(quantity_of(sensor_type, quantity)[1], value)


def grade_quantity(q: Quantity, value: object) -> Processed:
    """``grade`` for an already resolved quantity."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # a tuple: quicker than a union
        return Processed(0.0, q.unit, "bad")
    v = plain(float(value))
    if v is None:
        return Processed(0.0, q.unit, "bad")
    if v < q.min or v > q.max:
        return Processed(v, q.unit, "bad")
    return Processed(v, q.unit, "good")
