"""ArduinoJson 6 (^6.21.3, both generations' ``platformio.ini``) as the boards use it.

The boards never see Python's ``json``: they call ``deserializeJson`` into a
document of a fixed size and then test every field with ``is<T>()`` or read it
with ``obj["key"] | default``. The differences matter for what a board accepts:

- a document has a fixed memory pool; a payload that needs more fails with
  ``NoMemory`` and is dropped as unparsable (``DynamicJsonDocument doc(256)`` for
  the heartbeat ack, ``(512)`` for the broadcast stop, ``(4096)`` per config
  half on legacy firmware ...). :func:`parse` charges the pool like ArduinoJson
  6 on a 32-bit ESP32: 16 bytes per array element or object member, plus each
  distinct string (keys too) with its terminating NUL unless the input is
  writable (``char*``, zero-copy mode);
- input ends at the end of the first value (trailing bytes are ignored) or at a
  NUL byte; single-quoted strings and unquoted keys are accepted; ``NaN`` and
  ``Infinity`` are not (``ARDUINOJSON_ENABLE_NAN/INFINITY`` default 0); nesting
  deeper than 10 fails with ``TooDeep``; a repeated key overwrites the earlier
  value;
- ``is<int>()`` is true only for a JSON integer that fits 32 bits, ``is<float>()``
  for any number, ``is<bool>()`` only for ``true``/``false``.

Pure: no I/O. Strings are returned as ``str`` (UTF-8, undecodable bytes kept as
surrogate escapes).
"""

from __future__ import annotations

import re
from typing import Any

#: sizeof(VariantSlot) on ESP32 (ARDUINOJSON_USE_DOUBLE/LONG_LONG = 1): one per member or element
SLOT = 16
#: ARDUINOJSON_DEFAULT_NESTING_LIMIT
NESTING_LIMIT = 10

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


class JsonError(Exception):
    """``DeserializationError``: ``code`` is its ``c_str()`` (``InvalidInput``,
    ``IncompleteInput``, ``NoMemory``, ``TooDeep``, ``EmptyInput``)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_WS = " \t\r\n"


class _Parser:
    def __init__(self, text: str, capacity: int | None, zero_copy: bool) -> None:
        self.s = text
        self.i = 0
        self.capacity = capacity
        self.zero_copy = zero_copy
        self.used = 0
        self.strings: set[bytes] = set()

    # memory -----------------------------------------------------------------
    def _charge(self, n: int) -> None:
        self.used += n
        if self.capacity is not None and self.used > self.capacity:
            raise JsonError("NoMemory")

    def _save_string(self, raw: bytes) -> None:
        if self.zero_copy or raw in self.strings:
            return  # deduplicated (ARDUINOJSON_ENABLE_STRING_DEDUPLICATION)
        self._charge(len(raw) + 1)
        self.strings.add(raw)

    # lexing -----------------------------------------------------------------
    def _peek(self) -> str:
        self._skip_ws()
        if self.i >= len(self.s):
            return ""
        return self.s[self.i]

    def _skip_ws(self) -> None:
        s = self.s
        while self.i < len(s) and s[self.i] in _WS:
            self.i += 1

    def value(self, depth: int) -> Any:
        c = self._peek()
        if c == "":
            raise JsonError("IncompleteInput")
        if c == "{":
            return self._object(depth)
        if c == "[":
            return self._array(depth)
        if c in "\"'":
            raw = self._quoted()
            self._save_string(raw)
            return raw.decode("utf-8", "surrogateescape")
        return self._literal()

    def _object(self, depth: int) -> dict[str, Any]:
        if depth >= NESTING_LIMIT:
            raise JsonError("TooDeep")
        self.i += 1
        out: dict[str, Any] = {}
        if self._peek() == "}":
            self.i += 1
            return out
        while True:
            c = self._peek()
            if c == "":
                raise JsonError("IncompleteInput")
            raw = self._quoted() if c in "\"'" else self._bare_key()
            key = raw.decode("utf-8", "surrogateescape")
            if self._peek() != ":":
                raise JsonError("IncompleteInput" if self.i >= len(self.s) else "InvalidInput")
            self.i += 1
            if key not in out:
                self._charge(SLOT)
                self._save_string(raw)
            out[key] = self.value(depth + 1)
            c = self._peek()
            if c == ",":
                self.i += 1
                continue
            if c == "}":
                self.i += 1
                return out
            raise JsonError("IncompleteInput" if c == "" else "InvalidInput")

    def _array(self, depth: int) -> list[Any]:
        if depth >= NESTING_LIMIT:
            raise JsonError("TooDeep")
        self.i += 1
        out: list[Any] = []
        if self._peek() == "]":
            self.i += 1
            return out
        while True:
            self._charge(SLOT)
            out.append(self.value(depth + 1))
            c = self._peek()
            if c == ",":
                self.i += 1
                continue
            if c == "]":
                self.i += 1
                return out
            raise JsonError("IncompleteInput" if c == "" else "InvalidInput")

    def _quoted(self) -> bytes:
        s = self.s
        quote = s[self.i]
        self.i += 1
        buf = bytearray()
        while True:
            if self.i >= len(s):
                raise JsonError("IncompleteInput")
            c = s[self.i]
            self.i += 1
            if c == quote:
                return bytes(buf)
            if c == "\\":
                if self.i >= len(s):
                    raise JsonError("IncompleteInput")
                e = s[self.i]
                self.i += 1
                simple = {'"': b'"', "'": b"'", "\\": b"\\", "/": b"/", "b": b"\b",
                          "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t"}
                if e in simple:
                    buf += simple[e]
                elif e == "u":
                    cp = self._hex4()
                    if 0xD800 <= cp < 0xDC00 and s[self.i:self.i + 2] == "\\u":
                        self.i += 2
                        lo = self._hex4()
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    buf += chr(cp).encode("utf-8", "surrogatepass")
                else:
                    raise JsonError("InvalidInput")
            else:
                buf.append(ord(c))

    def _hex4(self) -> int:
        h = self.s[self.i:self.i + 4]
        if len(h) < 4:
            raise JsonError("IncompleteInput")
        try:
            v = int(h, 16)
        except ValueError:
            raise JsonError("InvalidInput") from None
        self.i += 4
        return v

    def _bare_key(self) -> bytes:
        s = self.s
        start = self.i
        while self.i < len(s) and (s[self.i].isalnum() or s[self.i] in "_$") and ord(s[self.i]) < 128:
            self.i += 1
        if self.i == start:
            raise JsonError("InvalidInput")
        return s[start:self.i].encode("latin-1")

    def _literal(self) -> Any:
        s = self.s
        start = self.i
        while self.i < len(s) and (s[self.i].isalnum() or s[self.i] in "+-.") and ord(s[self.i]) < 128:
            self.i += 1
        word = s[start:self.i]
        if word == "true":
            return True
        if word == "false":
            return False
        if word == "null":
            return None
        if not word:
            raise JsonError("InvalidInput")
        if not _NUMBER.match(word):
            raise JsonError("InvalidInput")
        if "." not in word and "e" not in word and "E" not in word:
            n = int(word)
            if INT64_MIN <= n <= UINT64_MAX:
                return n
        return float(word)


def parse(payload: bytes, capacity: int | None = None, *, zero_copy: bool = False) -> Any:
    """``deserializeJson(doc, payload)`` with a document of ``capacity`` bytes
    (None: unlimited). Raises :class:`JsonError` with ArduinoJson's error name."""
    text = payload.split(b"\0", 1)[0].decode("latin-1")
    p = _Parser(text, capacity, zero_copy)
    if not text.strip(_WS):
        raise JsonError("EmptyInput")
    return p.value(0)


def memory(payload: bytes, *, zero_copy: bool = False) -> int:
    """Bytes of document pool the payload needs (raises JsonError if it does not parse)."""
    p = _Parser(payload.split(b"\0", 1)[0].decode("latin-1"), None, zero_copy)
    p.value(0)
    return p.used


# --------------------------------------------------------------------------
# is<T>() / as<T>() / operator|


def is_str(v: object) -> bool:
    """``is<const char*>()``."""
    return isinstance(v, str)


def is_bool(v: object) -> bool:
    """``is<bool>()``."""
    return isinstance(v, bool)


def is_integer(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_int(v: object) -> bool:
    """``is<int>()`` / ``is<long>()`` on the 32-bit ESP32: a JSON integer in int32 range."""
    return is_integer(v) and INT32_MIN <= v <= INT32_MAX  # type: ignore[operator]


def is_uint32(v: object) -> bool:
    """``is<uint32_t>()``: a JSON integer 0..2^32-1 (1.0, "1", -1, true are not)."""
    return is_integer(v) and 0 <= v <= UINT32_MAX  # type: ignore[operator]


def is_number(v: object) -> bool:
    """``is<float>()`` / ``is<double>()``: any JSON number, integers included."""
    return (is_integer(v) or isinstance(v, float))


def as_int(v: object) -> int:
    """``as<int>()``: a number truncated toward zero, 0 when it does not fit int32."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if INT32_MIN <= v <= INT32_MAX else 0
    if isinstance(v, float):
        if v != v or not (INT32_MIN <= v <= INT32_MAX):
            return 0
        return int(v)
    return 0


def as_uint32(v: object) -> int:
    """``as<uint32_t>()``."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if 0 <= v <= UINT32_MAX else 0
    if isinstance(v, float):
        if v != v or not (0 <= v <= UINT32_MAX):
            return 0
        return int(v)
    return 0


def or_str(obj: object, key: str, default: str) -> str:
    """``obj[key] | "default"``: the string if it is one, else the default."""
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if isinstance(v, str) else default


def or_int(obj: object, key: str, default: int = 0) -> int:
    """``obj[key] | 0`` (an ``int`` default): the value if ``is<int>()``, else the default."""
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if is_int(v) else default  # type: ignore[return-value]


def or_uint32(obj: object, key: str, default: int = 0) -> int:
    """``obj[key] | 0u`` assigned to a ``uint32_t`` (``is<uint32_t>()``)."""
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if is_uint32(v) else default  # type: ignore[return-value]


def or_bool(obj: object, key: str, default: bool = False) -> bool:
    """``obj[key] | false``."""
    v = obj.get(key) if isinstance(obj, dict) else None
    return v if isinstance(v, bool) else default


def or_float(obj: object, key: str, default: float = 0.0) -> float:
    """``obj[key] | 0.0f``: any number, else the default."""
    v = obj.get(key) if isinstance(obj, dict) else None
    return float(v) if is_number(v) else default  # type: ignore[arg-type]


def as_string(v: object) -> str:
    """``doc["key"].as<String>()``: a string as is; ``null``/missing -> "null";
    numbers and booleans serialised (ArduinoJson 6 converts them)."""
    if isinstance(v, str):
        return v
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    import json

    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def format_float(v: float) -> str:
    """How serializeJson writes a double (up to 9 significant digits, no trailing zeros)."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "Infinity" if v > 0 else "-Infinity"
    if v == int(v) and abs(v) < 1e9:
        return str(int(v)) if v != 0 or str(v)[0] != "-" else "0"
    s = f"{v:.9g}"
    return s


# --------------------------------------------------------------------------
# JsonHelpers (utils/json_helpers.h, identical in both generations)


def extract_int(obj: dict[str, Any], key: str) -> int | None:
    """``JsonHelpers::extractInt``: any number (floats truncated), else None."""
    if key not in obj:
        return None
    v = obj[key]
    if is_number(v):
        return as_int(v)
    return None


def extract_string(obj: dict[str, Any], key: str) -> str | None:
    """``JsonHelpers::extractString``: only a JSON string, else None."""
    if key not in obj:
        return None
    v = obj[key]
    return v if isinstance(v, str) else None


def extract_bool(obj: dict[str, Any], key: str) -> bool | None:
    """``JsonHelpers::extractBool``: true/false, an int32 integer (!= 0), or the
    strings "true"/"1"/"false"/"0" in any case; else None."""
    if key not in obj:
        return None
    v = obj[key]
    if isinstance(v, bool):
        return v
    if is_int(v):
        return v != 0
    if isinstance(v, str):
        low = v.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
    return None
