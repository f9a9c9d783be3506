"""Two-point calibration for the analog probes (ph, ec).

``kaiser calibrate ph 2480=4.0 1650=7.0`` takes two ADC readings of reference
solutions and prints the ``calibration:`` block for the device map. slope and
offset are in terms of the voltage at the ADC pin, V = raw / 4095 * 3.3, so
that calibrated value = slope * V + offset.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from engine.errors import UnknownSensorType
from sensors.common import ADC_MAX, ADC_VREF
from sensors.registry import resolve

#: types whose value is linear in the ADC voltage with slope/offset calibration
TWO_POINT_TYPES = ("ph", "ec")


class CalibrationError(ValueError):
    """Bad calibration input; the message is written for people."""


def parse_point(text: str) -> tuple[float, float]:
    """``"2480=4.0"`` -> (raw ADC count, reference value). Raises CalibrationError."""
    raw_s, sep, ref_s = str(text).partition("=")
    if not sep:
        raise CalibrationError(f"expected RAW=REF (e.g. 2480=4.0), got {text!r}")
    try:
        raw, ref = float(raw_s), float(ref_s)
    except ValueError:
        raise CalibrationError(f"expected two numbers in RAW=REF, got {text!r}") from None
    if not (math.isfinite(raw) and math.isfinite(ref)):
        raise CalibrationError(f"RAW and REF must be finite numbers, got {text!r}")
    if not 0.0 <= raw <= ADC_MAX:
        raise CalibrationError(f"RAW must be an ADC count 0..4095, got {raw_s.strip()!r} in {text!r}")
    return raw, ref


def two_point(type_name: str, p1: tuple[float, float], p2: tuple[float, float]) -> dict[str, float]:
    """Slope (per volt) and offset from two (raw, reference) points.

    Raises CalibrationError for a type without two-point calibration, equal raw
    values or equal references."""
    try:
        st, _ = resolve(type_name)
    except UnknownSensorType as exc:
        raise CalibrationError(f"{exc}; two-point calibration exists for: {', '.join(TWO_POINT_TYPES)}") from None
    if st.name not in TWO_POINT_TYPES:
        raise CalibrationError(
            f"sensor type {st.name!r} has no two-point calibration (only {', '.join(TWO_POINT_TYPES)})"
        )
    (r1, ref1), (r2, ref2) = p1, p2
    if r1 == r2:
        raise CalibrationError(f"the two RAW values are equal ({r1:g}): measure two different references")
    if ref1 == ref2:
        raise CalibrationError(f"the two REF values are equal ({ref1:g}): use two different references")
    v1, v2 = r1 / ADC_MAX * ADC_VREF, r2 / ADC_MAX * ADC_VREF
    slope = (ref2 - ref1) / (v2 - v1)
    offset = ref1 - slope * v1
    return {"slope": slope, "offset": offset}


def _fixed(x: float) -> str:
    """Six decimals, never exponent notation."""
    s = f"{x:.6f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def format_block(cal: dict[str, float]) -> str:
    """The YAML block to paste under the sensor in the device map."""
    return "calibration:\n" + "".join(f"  {k}: {_fixed(v)}\n" for k, v in cal.items())


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``kaiser calibrate TYPE RAW1=REF1 RAW2=REF2``: exit 0 and print the block, or
    exit 2 with a message on bad input."""
    try:
        points: Sequence[str] = list(getattr(args, "points", None) or [])
        if len(points) != 2:
            raise CalibrationError(f"expected exactly two RAW=REF points, got {len(points)}")
        p1, p2 = parse_point(points[0]), parse_point(points[1])
        cal = two_point(str(getattr(args, "type", "")), p1, p2)
    except CalibrationError as exc:
        print(f"kaiser calibrate: error: {exc}", file=sys.stderr)
        return 2
    st, _ = resolve(args.type)
    print(f"# {st.name}: {p1[0]:g} -> {p1[1]:g}, {p2[0]:g} -> {p2[1]:g} (value = slope * V + offset)")
    print(format_block(cal), end="")
    return 0
