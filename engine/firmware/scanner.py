"""The actuator command scanner and Arduino ``String`` arithmetic.

Both generations read actuator commands without a JSON parser
(``services/actuator/actuator_manager.cpp``, anonymous namespace:
``extractJSONString``, ``extractJSONFloat``, ``extractJSONUInt32``): they look for
the first occurrence of the literal text ``"key":`` anywhere in the payload (no
space allowed before the colon; inside another string or a nested object counts
too), skip spaces, and take either a quoted string up to the next ``"`` or
everything up to the next ``,`` or ``}`` (trimmed, quotes removed). Numbers come
from ``String::toFloat`` (``atof``, a 32-bit float) and ``String::toInt``
(``atol``, a 32-bit long, then cast to ``uint32_t``).

Everything works on the payload as bytes (decoded latin-1 so that indices are
byte offsets, as in Arduino's ``String``).
"""

from __future__ import annotations

import math
import re
import struct

_FLOAT_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))",
                           re.IGNORECASE)
_INT_PREFIX = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+)")


def text(payload: bytes) -> str:
    """The payload as Arduino's ``String`` holds it (one char per byte)."""
    return payload.decode("latin-1")


def utf8(s: str) -> str:
    """A byte-string slice back to readable text."""
    return s.encode("latin-1").decode("utf-8", "replace")


def extract_string(json: str, key: str) -> str:
    """``extractJSONString(json, key)``: "" when the literal ``"key":`` is absent."""
    pattern = '"' + key + '":'
    pos = json.find(pattern)
    if pos == -1:
        return ""
    pos += len(pattern)
    while pos < len(json) and json[pos] in ' "':
        if json[pos] == '"':
            pos += 1
            end = json.find('"', pos)
            if end == -1:
                return ""
            return json[pos:end]
        pos += 1
    end = json.find(",", pos)
    if end == -1:
        end = json.find("}", pos)
    if end == -1:
        end = len(json)
    # String::trim() strips isspace() from both ends
    return json[pos:end].strip(" \t\n\v\f\r").replace('"', "")


def to_float32(x: float) -> float:
    """Round a double to the nearest IEEE single (what a ``float`` holds)."""
    if math.isnan(x) or math.isinf(x):
        return x
    try:
        return float(struct.unpack("<f", struct.pack("<f", x))[0])
    except OverflowError:
        return math.copysign(math.inf, x)


def to_float(s: str) -> float:
    """``String::toFloat()``: ``atof`` on the text, 0 when no number starts it."""
    m = _FLOAT_PREFIX.match(s)
    if not m:
        return 0.0
    word = m.group(1).lower()
    return to_float32(float(word.replace("infinity", "inf")))


def to_long(s: str) -> int:
    """``String::toInt()``: ``atol`` (strtol, clamped to the 32-bit long range)."""
    m = _INT_PREFIX.match(s)
    if not m:
        return 0
    v = int(m.group(1))
    return max(-(2**31), min(2**31 - 1, v))


def extract_float(json: str, key: str, default: float = 0.0) -> float:
    """``extractJSONFloat``."""
    v = extract_string(json, key)
    return to_float(v) if v else default


def extract_uint32(json: str, key: str, default: int = 0) -> int:
    """``extractJSONUInt32``: ``static_cast<uint32_t>(value.toInt())``."""
    v = extract_string(json, key)
    return to_long(v) & 0xFFFFFFFF if v else default


def arduino_float(x: float, decimals: int = 2) -> str:
    """``String(float, decimals)`` (``dtostrf``): fixed point, ``nan``/``inf`` spelled out."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{decimals}f}"


def gpio_from_topic(topic: str) -> int:
    """``ActuatorManager::extractGPIOFromTopic``: the text between ``/actuator/`` and the
    next ``/``, through ``toInt()``, as ``uint8_t``; 255 when there is no such part."""
    idx = topic.find("/actuator/")
    if idx == -1:
        return 255
    start = idx + 10
    end = topic.find("/", start)
    if end == -1:
        return 255
    part = topic[start:end].strip(" \t\n\v\f\r")
    if not part:
        return 255
    return to_long(part) & 0xFF
