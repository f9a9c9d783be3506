"""The firmware wire format (PROTOCOL.md), both generations: bytes in, typed messages out.

Pure: no I/O, no clock (the caller passes ``received_at``), no logging.

Decoding (ESP32 -> server)::

    msg = decode(topic, payload, retained=False, received_at=now)

returns one of the frozen message types below, or a ``Rejection`` naming the
topic, the device (when the topic names one) and a sentence saying why. It never
raises. Every spelling of both firmware generations is accepted (``ts`` /
``timestamp``, ``raw`` / ``raw_value``, ``value`` / ``processed_value``, ...);
unknown keys are ignored.

Timestamps: a device time within 30 days before and 1 day after ``received_at``
is Unix seconds (``ts_kind == "unix_s"``), the same in milliseconds is
``"unix_ms"``; anything else (legacy firmware's milliseconds since boot) is
``"uptime"`` and the message is stamped with ``received_at``; no time at all is
``"none"`` (also stamped with ``received_at``). ``ts`` on a message is always
Unix seconds; ``device_ts`` keeps what the board sent.

Retained messages (legacy firmware publishes its readings retained, so the
broker replays them on subscribe) carry ``retained=True``: a snapshot that may
fill the latest-value table but must not fire an edge rule.

Encoding (server -> ESP32): ``encode_*`` functions return ``Outgoing(topic,
payload, qos, retain)``; they raise ``engine.errors.CodecError`` for arguments no
firmware could accept (a bad esp id, a duty outside 0.0-1.0, ...).
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import orjson

from engine.errors import CodecError
from engine.model import Actuator, Sensor

#: payloads larger than this are rejected before parsing (bytes)
MAX_PAYLOAD = 64 * 1024
#: how far a device clock may lag / lead the receive time and still count as Unix time
PAST_WINDOW = 30 * 86400.0
FUTURE_WINDOW = 86400.0
GPIO_MAX = 39
#: gpio of an alert about the whole board
BOARD_GPIO = 255
CONTRACT_VERSION = 2

QUALITIES = frozenset({"excellent", "good", "fair", "poor", "bad", "stale", "error"})

_ESP_ID = re.compile(r"ESP_[0-9A-F]{6,8}\Z")


def valid_esp_id(esp_id: object) -> bool:
    """``ESP_`` + 6 to 8 upper-case hex digits."""
    return esp_id.__class__ is str and _ESP_ID.match(esp_id) is not None


# --------------------------------------------------------------------------
# Decoded messages


@dataclass(frozen=True, slots=True, kw_only=True)
class _Header:
    topic: str
    kaiser_id: str  # "" for an unprovisioned board (kaiser//esp/...)
    esp_id: str
    received_at: float  # Unix seconds
    retained: bool = False

    @property
    def snapshot(self) -> bool:
        """A retained message replayed by the broker: fills state, fires no edge."""
        return self.retained


class SensorValue(NamedTuple):
    """One value of one sensor as the firmware sent it (not yet processed).

    Immutable (a named tuple: built once per reading on the hot path)."""

    gpio: int
    sensor_type: str  # wire name, lower-case (alias not resolved: see sensors.registry)
    raw: float | None = None
    value: float | None = None
    raw_mode: bool | None = None  # None: not sent
    unit: str = ""
    quality: str | None = None  # None: not sent or unknown
    ts: float = 0.0  # Unix seconds (receive time for uptime stamps)
    ts_kind: str = "none"  # "unix_s" | "unix_ms" | "uptime" | "none"
    device_ts: float | None = None  # the time field as sent
    seq: int | None = None
    zone_id: str | None = None
    subzone_id: str | None = None
    i2c_address: int | None = None
    onewire_address: str | None = None  # upper-case hex, separators removed

    @property
    def needs_processing(self) -> bool:
        """True when the server must compute the value from ``raw`` (raw_mode true,
        or raw_mode not sent but a raw value present)."""
        if self.raw is None:
            return False
        return self.raw_mode is not False or self.value is None


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorData(_Header):
    """``sensor/{gpio}/data`` (one value), ``sensor/batch`` (several) or the zone-master form."""

    values: tuple[SensorValue, ...]
    batch: bool = False
    zone_id: str | None = None
    subzone_id: str | None = None
    skipped: tuple[str, ...] = ()  # why batch items were dropped (the rest is kept)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(_Header):
    ts: float
    ts_kind: str
    uptime: float | None = None  # seconds since boot as the board reports it
    heap_free: int | None = None
    wifi_rssi: int | None = None
    sensor_count: int | None = None
    actuator_count: int | None = None
    zone_id: str | None = None
    master_zone_id: str | None = None
    zone_assigned: bool | None = None
    #: current firmware's own handover counter (``active_handover_epoch``); None from
    #: legacy boards, which do not send it
    handover_epoch: int | None = None
    boot_sequence_id: str | None = None
    fields: Mapping[str, Any] | None = None  # the whole payload, for the store

    @property
    def generation(self) -> str | None:
        """``current`` when the heartbeat carries fields only current firmware sends,
        else None (legacy, or a board that says too little to tell)."""
        f = self.fields
        if f is not None and any(k in f for k in CURRENT_HEARTBEAT_FIELDS):
            return "current"
        return None


#: heartbeat keys only current firmware (2026) sends (mqtt_client.cpp publishHeartbeat)
CURRENT_HEARTBEAT_FIELDS = ("active_handover_epoch", "handover_completed_epoch", "boot_sequence_id",
                            "handover_contract_last_reject", "config_status", "time_valid")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionAnnounce(_Header):
    """``session/announce`` (current firmware, on every MQTT connect): the board's
    handover epoch for this session. Always under ``kaiser/god/`` in the firmware."""

    handover_epoch: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostics(_Header):
    ts: float
    ts_kind: str
    uptime: float | None = None
    heap_free: int | None = None
    wifi_rssi: int | None = None
    fields: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Will(_Header):
    """The board's last will: the broker publishes it when the board vanishes."""

    status: str
    reason: str
    ts: float
    ts_kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ActuatorStatus(_Header):
    gpio: int
    actuator_type: str
    state: bool
    pwm: int | None = None  # 0-255
    runtime_ms: int | None = None
    emergency: bool = False  # the board's emergency stop is latched
    zone_id: str | None = None
    subzone_id: str | None = None
    ts: float
    ts_kind: str

    @property
    def value(self) -> float:
        """The reported state as a duty 0.0-1.0."""
        if not self.state:
            return 0.0
        if self.pwm is None or self.actuator_type in ("pump", "relay"):
            return 1.0
        return self.pwm / 255.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ActuatorResponse(_Header):
    gpio: int
    command: str  # upper-case: ON, OFF, PWM, TOGGLE, ...
    value: float | None
    duration: float | None
    success: bool
    message: str
    ts: float
    ts_kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ActuatorAlert(_Header):
    gpio: int  # 255 = whole board
    alert_type: str  # emergency_stop | runtime_protection | verification_failed | ...
    message: str
    ts: float
    ts_kind: str

    @property
    def whole_board(self) -> bool:
        return self.gpio == BOARD_GPIO


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigResponse(_Header):
    status: str  # success | error (| partial_success in some builds)
    config_type: str  # sensor | actuator | ""
    count: int | None
    message: str
    error_code: str | None = None
    failed_item: Mapping[str, Any] | None = None
    ts: float
    ts_kind: str
    correlation_id: str | None = None  # current firmware echoes the push's id; legacy sends none

    @property
    def ok(self) -> bool:
        return self.status == "success"


@dataclass(frozen=True, slots=True, kw_only=True)
class ZoneAck(_Header):
    status: str
    zone_id: str | None = None
    master_zone_id: str | None = None
    message: str = ""
    ts: float
    ts_kind: str
    fields: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that could not be decoded, with a sentence saying why.

    ``kind`` is the message kind the topic named ("sensor_data", "heartbeat", ...)
    or "unknown" when the topic itself is not understood. ``error`` is the class of
    problem: "topic", "size", "encoding", "json", "field".
    """

    topic: str
    reason: str
    esp_id: str | None
    kind: str
    error: str = "field"

    def __str__(self) -> str:
        who = f" from {self.esp_id}" if self.esp_id else ""
        return f"rejected {self.kind} message{who} on {self.topic!r}: {self.reason}"


Message: TypeAlias = (
    SensorData | Heartbeat | Diagnostics | Will | ActuatorStatus | ActuatorResponse
    | ActuatorAlert | ConfigResponse | ZoneAck | SessionAnnounce
)


# --------------------------------------------------------------------------
# Topics

#: topic tail after kaiser/{k}/esp/{esp}/ -> message kind ("+" = a gpio)
_TAILS: dict[tuple[str, ...], str] = {
    ("sensor", "+", "data"): "sensor_data",
    ("sensor", "batch"): "sensor_batch",
    ("system", "heartbeat"): "heartbeat",
    ("system", "diagnostics"): "diagnostics",
    ("system", "will"): "will",
    ("actuator", "+", "status"): "actuator_status",
    ("actuator", "+", "response"): "actuator_response",
    ("actuator", "+", "alert"): "actuator_alert",
    ("config_response",): "config_response",
    ("zone", "ack"): "zone_ack",
    ("session", "announce"): "session_announce",
}


def subscriptions(kaiser_id: str) -> list[str]:
    """Every topic filter the server subscribes to: each ESP-to-server topic for
    ``kaiser_id`` and for unprovisioned boards (empty kaiser id), plus the
    zone-master reading form."""
    out: list[str] = []
    for k in dict.fromkeys((kaiser_id, "")):
        for tail in _TAILS:
            out.append(f"kaiser/{k}/esp/+/" + "/".join(tail))
        out.append(f"kaiser/{k}/zone/+/esp/+/subzone/+/sensor/+/data")
    if kaiser_id != "god":  # current firmware announces under a fixed kaiser/god/
        out.append("kaiser/god/esp/+/session/announce")
    return out


class _Bad(Exception):
    """Internal: a reason to reject; never leaves this module."""

    def __init__(self, reason: str, error: str = "field") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _gpio_text(s: str, allow_board: bool = False) -> int:
    if not (s.isascii() and s.isdigit()) or len(s) > 3:
        raise _Bad(f"gpio in topic must be a number 0-{GPIO_MAX}, got {s!r}", "topic")
    g = int(s)
    if g > GPIO_MAX and not (allow_board and g == BOARD_GPIO):
        raise _Bad(f"gpio {g} in topic is outside 0-{GPIO_MAX}", "topic")
    return g


class _Topic(NamedTuple):
    kind: str
    kaiser_id: str
    esp_id: str
    gpio: int | None
    zone: str | None
    subzone: str | None


def parse_topic(topic: str) -> _Topic:
    """Split an ESP-to-server topic. Raises _Bad (internal) when not understood.
    Boards repeat the same few topics, so answers are memoised (bounded)."""
    return _parse_topic(topic)


@functools.lru_cache(maxsize=16384)  # bounded: made-up ids must not grow it
def _parse_topic(topic: str) -> _Topic:
    parts = topic.split("/")
    n = len(parts)
    if n < 5 or parts[0] != "kaiser":
        raise _Bad("not an ESP32 topic (expected kaiser/{id}/esp/{esp}/...)", "topic")
    if parts[2] == "esp":
        tail = tuple(parts[4:])
        kind = _TAILS.get(tail)
        gpio: int | None = None
        if kind is None and len(tail) == 3:
            kind = _TAILS.get((tail[0], "+", tail[2]))
            if kind is not None:
                gpio = _gpio_text(tail[1], allow_board=kind == "actuator_alert")
        if kind is None:
            raise _Bad(f"unknown topic tail {'/'.join(tail)!r}", "topic")
        zone = sub = None
        esp = parts[3]
    elif parts[2] == "zone" and n == 11 and parts[4] == "esp" and parts[6] == "subzone" \
            and parts[8] == "sensor" and parts[10] == "data":
        kind, esp, zone, sub = "sensor_data", parts[5], parts[3], parts[7]
        gpio = _gpio_text(parts[9])
    else:
        raise _Bad("not an ESP32 topic (expected kaiser/{id}/esp/{esp}/...)", "topic")
    if not valid_esp_id(esp):
        raise _Bad(f"bad esp id {esp!r} in topic (expected ESP_ + 6 to 8 upper-case hex digits)", "topic")
    return _Topic(kind, parts[1], esp, gpio, zone, sub)


# --------------------------------------------------------------------------
# Field helpers (each raises _Bad with a sentence)


def _short(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _number(v: object, key: str) -> float:
    c = v.__class__
    if c is float:
        if math.isfinite(v):  # type: ignore[arg-type]
            return v  # type: ignore[return-value]
        raise _Bad(f"{key} must be a finite number, got {_short(v)}")
    if c is int:
        try:
            return float(v)  # type: ignore[arg-type]
        except OverflowError:
            raise _Bad(f"{key} is too large, got {_short(v)}") from None
    raise _Bad(f"{key} must be a number, got {_short(v)}")


def _opt_number(d: Mapping[str, Any], key: str, alt: str | None = None) -> float | None:
    v = d.get(key)
    if v is None and alt is not None:
        v = d.get(alt)
        key = alt
    return None if v is None else _number(v, key)


def _opt_int(d: Mapping[str, Any], key: str, alt: str | None = None) -> int | None:
    f = _opt_number(d, key, alt)
    if f is None:
        return None
    if f != int(f):
        raise _Bad(f"{alt if d.get(key) is None and alt else key} must be a whole number, got {f!r}")
    return int(f)


def _soft_int(d: Mapping[str, Any], key: str, alt: str | None = None) -> int | None:
    """An informational integer: anything unusable is dropped, not rejected."""
    v = d.get(key)
    if v is None and alt is not None:
        v = d.get(alt)
    if v.__class__ is int:
        return v
    if v.__class__ is float and math.isfinite(v) and v == int(v):
        return int(v)
    return None


def _soft_str(d: Mapping[str, Any], key: str, alt: str | None = None) -> str | None:
    v = d.get(key)
    if v is None and alt is not None:
        v = d.get(alt)
    return v if v.__class__ is str else None


def _req_str(d: Mapping[str, Any], key: str, alt: str | None = None) -> str:
    v = d.get(key)
    if v is None and alt is not None:
        v = d.get(alt)
    if v is None:
        raise _Bad(f"missing {key}" + (f" (or {alt})" if alt else ""))
    if v.__class__ is not str:
        raise _Bad(f"{key} must be a string, got {_short(v)}")
    return v


_TRUE = frozenset({"true", "on", "1", "yes"})
_FALSE = frozenset({"false", "off", "0", "no"})


def _opt_bool(d: Mapping[str, Any], key: str) -> bool | None:
    v = d.get(key)
    if v is None or v is True or v is False:
        return v
    if v.__class__ is int and v in (0, 1):
        return bool(v)
    if v.__class__ is str:
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _Bad(f"{key} must be true or false, got {_short(v)}")


def _gpio_field(d: Mapping[str, Any], from_topic: int | None, allow_board: bool = False) -> int:
    v = d.get("gpio")
    if v is None:
        if from_topic is None:
            raise _Bad("missing gpio")
        return from_topic
    if v.__class__ is not int:
        if v.__class__ is float and math.isfinite(v) and v == int(v):
            v = int(v)
        else:
            raise _Bad(f"gpio must be a whole number, got {_short(v)}")
    if not 0 <= v <= GPIO_MAX and not (allow_board and v == BOARD_GPIO):
        raise _Bad(f"gpio {v} is outside 0-{GPIO_MAX}")
    if from_topic is not None and v != from_topic:
        raise _Bad(f"gpio {v} in the payload disagrees with gpio {from_topic} in the topic")
    return v


def classify_ts(device_ts: float | None, received_at: float, time_valid: bool | None = None) -> tuple[float, str]:
    """A device time -> (Unix seconds, kind). See the module docstring."""
    if device_ts is None:
        return received_at, "none"
    if time_valid is not False:
        if received_at - PAST_WINDOW <= device_ts <= received_at + FUTURE_WINDOW:
            return float(device_ts), "unix_s"
        s = device_ts / 1000.0
        if received_at - PAST_WINDOW <= s <= received_at + FUTURE_WINDOW:
            return s, "unix_ms"
    return received_at, "uptime"


def _time(d: Mapping[str, Any], received_at: float) -> tuple[float, str, float | None]:
    v = d.get("ts")
    key = "ts"
    if v is None:
        v = d.get("timestamp")
        key = "timestamp"
    if v is None:
        return received_at, "none", None
    t = v if v.__class__ is int else _number(v, key)
    if t < 0:
        raise _Bad(f"{key} must not be negative, got {t!r}")
    tv = d.get("time_valid")
    ts, kind = classify_ts(t, received_at, tv if tv.__class__ is bool else None)
    return ts, kind, float(t)


def _soft_time(d: Mapping[str, Any], received_at: float) -> tuple[float, str, float | None]:
    """``_time`` for liveness messages: a broken time field must not make a board
    look offline, so it reads as no time at all."""
    try:
        return _time(d, received_at)
    except _Bad:
        return received_at, "none", None


def _soft_number(d: Mapping[str, Any], key: str, alt: str | None = None) -> float | None:
    try:
        return _opt_number(d, key, alt)
    except _Bad:
        return None


def _i2c(v: object) -> int | None:
    if v.__class__ is int and 0 <= v < 128:
        return v
    if v.__class__ is str:
        try:
            a = int(v, 0)
        except ValueError:
            return None
        return a if 0 <= a < 128 else None
    return None


def normalize_onewire(v: object) -> str | None:
    """A OneWire ROM address in any common spelling -> upper-case hex without separators."""
    if v.__class__ is not str or not v:
        return None
    s = v.upper().replace(":", "").replace("-", "").replace(" ", "")
    if s.startswith("0X"):
        s = s[2:]
    return s or None


# --------------------------------------------------------------------------
# Decoders per kind


_QUALITY = {q: q for q in QUALITIES}


@functools.lru_cache(maxsize=4096)
def _lower_name(st: str) -> str:
    return st.strip().lower()


def _type_name(st: object) -> str:
    """A wire sensor_type -> its lower-case spelling (memoised: few distinct names)."""
    if st.__class__ is str:
        name = _lower_name(st)
        if name:
            return name
    raise _Bad("missing sensor_type" if st is None else f"sensor_type must be a non-empty string, got {_short(st)}")


def _sensor_value(d: Any, gpio_topic: int | None, top: Mapping[str, Any] | None,
                  zone: str | None, sub: str | None, received_at: float) -> SensorValue:
    if d.__class__ is not dict:
        raise _Bad(f"a reading must be a JSON object, got {type(d).__name__}")
    get = d.get
    gpio = get("gpio")
    if gpio.__class__ is not int or not 0 <= gpio <= GPIO_MAX or (gpio_topic is not None and gpio != gpio_topic):
        gpio = _gpio_field(d, gpio_topic)
    st = _type_name(get("sensor_type"))
    raw, raw_key = get("raw"), "raw"
    if raw is None:
        raw, raw_key = get("raw_value"), "raw_value"
    value, value_key = get("value"), "value"
    if value is None:
        value, value_key = get("processed_value"), "processed_value"
    if raw.__class__ is _Printed or value.__class__ is _Printed:
        return _printed_value(d, gpio, st, raw, value, top, zone, sub, received_at)
    if raw is not None and raw.__class__ is not float:
        raw = _number(raw, raw_key)
    if value is not None and value.__class__ is not float:
        value = _number(value, value_key)
    if raw is None:
        if value is None:
            raise _Bad("a reading needs raw (raw_value) or value (processed_value)")
    elif raw.__class__ is float and not math.isfinite(raw):
        raise _Bad(f"raw must be a finite number, got {raw!r}")
    if value.__class__ is float and not math.isfinite(value):
        raise _Bad(f"value must be a finite number, got {value!r}")
    raw_mode = get("raw_mode")
    if raw_mode is not None and raw_mode is not True and raw_mode is not False:
        raw_mode = _opt_bool(d, "raw_mode")
    if raw_mode and raw is None:
        raise _Bad("raw_mode is true but no raw value was sent")
    if top is None or "ts" in d or "timestamp" in d:
        ts, kind, dts = _time(d, received_at)
    else:
        ts, kind, dts = _time(top, received_at)
    q = get("quality")
    if q is not None:
        q = (_QUALITY.get(q) or _QUALITY.get(q.lower())) if q.__class__ is str else None
    unit = get("unit")
    zid = get("zone_id")
    sid = get("subzone_id")
    if top is not None:
        if zid is None:
            zid = top.get("zone_id")
        if sid is None:
            sid = top.get("subzone_id")
    if zid.__class__ is not str or not zid:
        zid = zone
    if sid.__class__ is not str or not sid:
        sid = sub
    i2c = get("i2c_address")
    ow = get("onewire_address")
    seq = get("seq")
    return SensorValue(
        gpio, st, raw, value, raw_mode,
        unit if unit.__class__ is str else "",
        q, ts, kind, dts,
        seq if seq.__class__ is int else _soft_int(d, "seq") if seq is not None else None,
        zid, sid,
        None if i2c is None else _i2c(i2c),
        None if ow is None else normalize_onewire(ow),
    )


def _printed_value(d: Mapping[str, Any], gpio: int, st: str, raw: Any, value: Any,
                   top: Mapping[str, Any] | None, zone: str | None, sub: str | None,
                   received_at: float) -> SensorValue:
    """A reading with legacy's bare nan/inf: that value, quality bad, processed as
    sent (a non-finite raw cannot be converted)."""
    ts, kind, dts = _time(d if top is None or "ts" in d or "timestamp" in d else top, received_at)
    v = float(value) if value is not None and value.__class__ in (float, int, _Printed) else float("nan")
    if raw.__class__ is _Printed:
        v = float(raw) if value is None or value.__class__ is not _Printed else float(value)
    unit = d.get("unit")
    return SensorValue(gpio, st, None, v, False, unit if unit.__class__ is str else "", "bad",
                       ts, kind, dts, _soft_int(d, "seq"), zone, sub)


def _check_esp(d: Mapping[str, Any], esp: str) -> None:
    v = d.get("esp_id")
    if v is not None and v != esp and v != "":
        raise _Bad(f"esp_id {_short(v)} in the payload disagrees with {esp} in the topic")


def _single_value(t: _Topic, d: dict[str, Any], received_at: float) -> SensorValue:
    """The value of a ``sensor/{gpio}/data`` message (or the zone-master form)."""
    _check_esp(d, t.esp_id)
    return _sensor_value(d, t.gpio, None, t.zone, t.subzone, received_at)


def _dec_sensor_data(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    v = _single_value(t, d, received_at)
    return SensorData(values=(v,), zone_id=v.zone_id, subzone_id=v.subzone_id, **h)


def _dec_sensor_batch(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> SensorData:
    _check_esp(d, t.esp_id)
    items = d.get("sensors")
    if items is None:
        items = d.get("readings")
    if items.__class__ is not list:
        raise _Bad("a batch needs a list 'sensors'" if items is None
                   else f"sensors must be a list, got {type(items).__name__}")
    values: list[SensorValue] = []
    skipped: list[str] = []
    for i, item in enumerate(items):
        try:
            values.append(_sensor_value(item, None, d, None, None, received_at))
        except _Bad as exc:
            skipped.append(f"sensors[{i}]: {exc.reason}")
    if not values:
        raise _Bad("a batch without readings" if not skipped else "no usable reading in batch: " + skipped[0])
    return SensorData(values=tuple(values), batch=True, zone_id=_soft_str(d, "zone_id"),
                      subzone_id=_soft_str(d, "subzone_id"), skipped=tuple(skipped), **h)


def _dec_heartbeat(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    ts, kind, _ = _soft_time(d, received_at)
    za = d.get("zone_assigned")
    return Heartbeat(
        ts=ts, ts_kind=kind,
        uptime=_soft_number(d, "uptime", "uptime_seconds"),
        heap_free=_soft_int(d, "heap_free", "free_heap"),
        wifi_rssi=_soft_int(d, "wifi_rssi", "rssi"),
        sensor_count=_soft_int(d, "sensor_count"),
        actuator_count=_soft_int(d, "actuator_count"),
        zone_id=_soft_str(d, "zone_id"),
        master_zone_id=_soft_str(d, "master_zone_id"),
        zone_assigned=za if za.__class__ is bool else None,
        handover_epoch=_soft_int(d, "active_handover_epoch"),
        boot_sequence_id=_soft_str(d, "boot_sequence_id"),
        fields=d, **h,
    )


def _dec_session_announce(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    epoch = _soft_int(d, "handover_epoch", "session_epoch")
    if epoch is None or epoch < 0:
        raise _Bad("session/announce needs a handover_epoch >= 0")
    return SessionAnnounce(handover_epoch=epoch, reason=_soft_str(d, "reason") or "", **h)


def _dec_diagnostics(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    ts, kind, _ = _soft_time(d, received_at)
    return Diagnostics(
        ts=ts, ts_kind=kind,
        uptime=_soft_number(d, "uptime", "uptime_seconds"),
        heap_free=_soft_int(d, "heap_free", "free_heap"),
        wifi_rssi=_soft_int(d, "wifi_rssi", "rssi"),
        fields=d, **h,
    )


def _dec_will(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    ts, kind, _ = _soft_time(d, received_at)
    return Will(status=_soft_str(d, "status") or "offline",
                reason=_soft_str(d, "reason") or "unexpected_disconnect", ts=ts, ts_kind=kind, **h)


def _dec_actuator_status(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    gpio = _gpio_field(d, t.gpio)
    state = _opt_bool(d, "state")
    if state is None:
        raise _Bad("missing state")
    pwm = _opt_int(d, "pwm", "pwm_value")
    if pwm is not None and not 0 <= pwm <= 255:
        raise _Bad(f"pwm must be 0-255, got {pwm}")
    em = d.get("emergency")
    if em.__class__ is str:
        emergency = em.lower() not in ("normal", "", "none", "inactive", "clear")
    elif em.__class__ is bool:
        emergency = em
    else:
        emergency = False
    ts, kind, _ = _time(d, received_at)
    return ActuatorStatus(
        gpio=gpio, actuator_type=(_soft_str(d, "type", "actuator_type") or "").lower(),
        state=state, pwm=pwm, runtime_ms=_soft_int(d, "runtime_ms"), emergency=emergency,
        zone_id=_soft_str(d, "zone_id"), subzone_id=_soft_str(d, "subzone_id"),
        ts=ts, ts_kind=kind, **h,
    )


def _dec_actuator_response(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    gpio = _gpio_field(d, t.gpio)
    success = _opt_bool(d, "success")
    if success is None:
        raise _Bad("missing success")
    ts, kind, _ = _time(d, received_at)
    return ActuatorResponse(
        gpio=gpio, command=(_soft_str(d, "command") or "").upper(),
        value=_opt_number(d, "value"), duration=_opt_number(d, "duration"),
        success=success, message=_soft_str(d, "message") or "", ts=ts, ts_kind=kind, **h,
    )


def _dec_actuator_alert(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    gpio = _gpio_field(d, t.gpio, allow_board=True)
    ts, kind, _ = _time(d, received_at)
    return ActuatorAlert(
        gpio=gpio, alert_type=(_req_str(d, "type", "alert_type")).lower(),
        message=_soft_str(d, "message") or "", ts=ts, ts_kind=kind, **h,
    )


def _dec_config_response(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    status = _req_str(d, "status").lower()
    fi = d.get("failed_item")
    ts, kind, _ = _time(d, received_at)
    return ConfigResponse(
        status=status, config_type=(_soft_str(d, "type", "config_type") or "").lower(),
        count=_soft_int(d, "count"), message=_soft_str(d, "message") or "",
        error_code=_soft_str(d, "error_code"), failed_item=fi if fi.__class__ is dict else None,
        ts=ts, ts_kind=kind, correlation_id=_soft_str(d, "correlation_id") or None, **h,
    )


def _dec_zone_ack(t: _Topic, d: dict[str, Any], h: dict[str, Any], received_at: float) -> Message:
    _check_esp(d, t.esp_id)
    ts, kind, _ = _time(d, received_at)
    return ZoneAck(
        status=(_soft_str(d, "status") or "").lower(), zone_id=_soft_str(d, "zone_id"),
        master_zone_id=_soft_str(d, "master_zone_id"), message=_soft_str(d, "message") or "",
        ts=ts, ts_kind=kind, fields=d, **h,
    )


_DECODERS: dict[str, Callable[[_Topic, dict[str, Any], dict[str, Any], float], Message]] = {
    "sensor_data": _dec_sensor_data,
    "sensor_batch": _dec_sensor_batch,
    "heartbeat": _dec_heartbeat,
    "diagnostics": _dec_diagnostics,
    "will": _dec_will,
    "actuator_status": _dec_actuator_status,
    "actuator_response": _dec_actuator_response,
    "actuator_alert": _dec_actuator_alert,
    "config_response": _dec_config_response,
    "zone_ack": _dec_zone_ack,
    "session_announce": _dec_session_announce,
}


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


_JSON = json.JSONDecoder(parse_constant=_no_constants)
_loads = orjson.loads


class _Printed(float):
    """A non-finite number as legacy firmware prints it: it builds payloads with
    Arduino's ``String(float)``, which writes ``nan``, ``inf``, ``-inf`` or ``ovf``
    (bare, not JSON). Kept as that value; the reading gets quality ``bad``."""

    __slots__ = ()


_PRINTED = {"NaN": _Printed("nan"), "Infinity": _Printed("inf"), "-Infinity": _Printed("-inf")}
_PRINTED_JSON = json.JSONDecoder(parse_constant=_PRINTED.__getitem__)
# a JSON string (left alone) or a bare nan/inf/ovf where a value may stand
_BARE = re.compile(r'("(?:[^"\\]|\\.)*")|(?<=[:\[,])(\s*)(-?)(nan|inf|ovf)(?=\s*[,}\]])', re.IGNORECASE)


def _bare_constant(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        return m.group(1)
    neg = m.group(3) == "-"
    word = m.group(4).lower()
    return m.group(2) + ("NaN" if word == "nan" else "-Infinity" if neg else "Infinity")


def _legacy_json(text: str) -> Any:
    """Second chance for a payload that is not JSON: legacy firmware's bare
    ``nan``/``inf``/``ovf``. Raises ValueError when that is not the reason."""
    fixed = _BARE.sub(_bare_constant, text)
    if fixed == text:
        raise ValueError("no bare nan/inf")
    return _PRINTED_JSON.decode(fixed)


def decode(topic: str, payload: bytes, *, retained: bool = False, received_at: float) -> Message | Rejection:
    """Decode one ESP32-to-server message. Never raises: bad input -> Rejection."""
    try:
        return _decode(topic, payload, retained, received_at)
    except _Bad as exc:
        return Rejection(str(topic), exc.reason, _esp_guess(topic), _kind_guess(topic), exc.error)
    except Exception as exc:  # the contract is "never raises"; say what broke
        return Rejection(str(topic), f"cannot decode: {type(exc).__name__}: {_short(str(exc))}",
                         _esp_guess(topic), _kind_guess(topic), "field")


def sensor_values(topic: str, payload: bytes, *, received_at: float) -> tuple[str, tuple[SensorValue, ...]] | None:
    """The board's esp id and the values of a sensor message (one value or a batch),
    exactly as ``decode`` reads them, without the ``SensorData`` around them (the
    event loop's hot path: building that frozen message costs as much as reading
    the values). None for any other message and for one ``decode`` rejects (decode
    that for the Rejection). Never raises."""
    try:
        t, d = _parse(topic, payload, received_at)
        if t.kind == "sensor_data":
            return t.esp_id, (_single_value(t, d, received_at),)
        if t.kind == "sensor_batch":
            h = {"topic": topic, "kaiser_id": t.kaiser_id, "esp_id": t.esp_id, "received_at": received_at}
            return t.esp_id, _dec_sensor_batch(t, d, h, received_at).values
    except Exception:  # decode() says why
        return None
    return None


def _decode(topic: str, payload: bytes, retained: bool, received_at: float) -> Message | Rejection:
    t, d = _parse(topic, payload, received_at)
    h = {"topic": topic, "kaiser_id": t.kaiser_id, "esp_id": t.esp_id,
         "received_at": received_at, "retained": bool(retained)}
    return _DECODERS[t.kind](t, d, h, received_at)


def _parse(topic: str, payload: bytes, received_at: float) -> tuple[_Topic, dict[str, Any]]:
    """The topic and the JSON object of a message. Raises _Bad."""
    if topic.__class__ is not str:
        raise _Bad(f"topic must be a string, got {type(topic).__name__}", "topic")
    t = parse_topic(topic)
    if (received_at.__class__ is not float and not isinstance(received_at, int | float)) \
            or received_at - received_at != 0.0:
        raise _Bad(f"received_at must be finite Unix seconds, got {received_at!r}", "field")
    if payload.__class__ is not bytes:
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        elif isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
        else:
            raise _Bad(f"payload must be bytes, got {type(payload).__name__}", "encoding")
    if len(payload) > MAX_PAYLOAD:
        raise _Bad(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit", "size")
    try:
        # orjson reads what json reads, 3x faster (the hot path: every reading), but
        # an integer past 64 bits becomes the nearest double; what it refuses (NaN,
        # lone surrogates, bad UTF-8, 1e400) takes the path below, which accepts it or
        # names the fault exactly as before
        d = _loads(payload)
    except orjson.JSONDecodeError:
        d = _parse_slowly(payload)
    if d.__class__ is not dict:
        raise _Bad(f"payload must be a JSON object, got {_json_kind(d)}", "json")
    return t, d


def _parse_slowly(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"payload is not valid UTF-8 (byte {exc.start})", "encoding") from None
    try:
        d = _JSON.decode(text)
    except RecursionError:
        raise _Bad("payload JSON is nested too deeply", "json") from None
    except ValueError as exc:
        try:
            d = _legacy_json(text)
        except (ValueError, RecursionError):
            raise _Bad(f"payload is not valid JSON: {exc}", "json") from None
    return d


def _json_kind(v: object) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _esp_guess(topic: object) -> str | None:
    if topic.__class__ is not str:
        return None
    parts = topic.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "esp" and valid_esp_id(parts[i + 1]):
            return parts[i + 1]
    return None


def _kind_guess(topic: object) -> str:
    if topic.__class__ is not str:
        return "unknown"
    try:
        return parse_topic(topic).kind
    except _Bad:
        return "unknown"


# --------------------------------------------------------------------------
# Encoding (server -> ESP32)


class Outgoing(NamedTuple):
    """One message to publish."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _esp(esp_id: str) -> str:
    if not valid_esp_id(esp_id):
        raise CodecError(f"bad esp id {esp_id!r} (expected ESP_ + 6 to 8 upper-case hex digits)")
    return esp_id


def _gpio(gpio: int) -> int:
    if isinstance(gpio, bool) or not isinstance(gpio, int) or not 0 <= gpio <= GPIO_MAX:
        raise CodecError(f"gpio must be 0-{GPIO_MAX}, got {gpio!r}")
    return gpio


def _duty(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise CodecError(f"value must be a duty 0.0-1.0, got {value!r}")
    # four decimals: never exponent notation on the wire (1e-05 -> 0.0)
    return round(float(value), 4) + 0.0


def wire_duration(duration: float | None) -> int:
    """Seconds -> the firmware's whole seconds: a positive fraction rounds up; None/0 = none."""
    if duration is None:
        return 0
    if isinstance(duration, bool) or not isinstance(duration, int | float) \
            or not math.isfinite(duration) or duration < 0:
        raise CodecError(f"duration must be seconds >= 0, got {duration!r}")
    return math.ceil(duration)


def command_for(actuator_type: str, value: float, *, toggle: bool = False) -> tuple[str, float]:
    """Which firmware command carries a duty for an actuator type.

    toggle -> TOGGLE; 0.0 (off) -> OFF 0.0 for every type; pump and relay: value
    >= 0.5 -> ON 1.0, else OFF 0.0; valve: 1.0 -> ON 1.0, an intermediate
    position -> PWM value (the firmware picks the position: < 0.33, < 0.66,
    above); pwm -> PWM value.
    """
    if toggle:
        return "TOGGLE", 0.0
    v = _duty(value)
    t = str(actuator_type).lower()
    if v == 0.0:
        return "OFF", 0.0
    if t in ("pump", "relay"):
        return ("ON", 1.0) if v >= 0.5 else ("OFF", 0.0)
    if t == "valve":
        return ("ON", 1.0) if v >= 1.0 else ("PWM", v)
    if t == "pwm":
        return "PWM", v
    raise CodecError(f"unknown actuator type {actuator_type!r} (pump, valve, relay, pwm)")


def encode_command(kaiser_id: str, esp_id: str, gpio: int, actuator_type: str, value: float,
                   duration: float | None = None, *, toggle: bool = False) -> Outgoing:
    """``actuator/{gpio}/command``: value is a duty 0.0-1.0, duration seconds (rounded
    up to whole seconds; None or 0 = none). Compact JSON: the firmware scans for the
    literal ``"key":``. The duration travels only with ``ON``, the one verb current
    firmware arms its auto-off for (legacy ignores it everywhere): the end of a PWM
    or TOGGLE ``for:`` is the server's own OFF."""
    cmd, v = command_for(actuator_type, value, toggle=toggle)
    topic = f"kaiser/{kaiser_id}/esp/{_esp(esp_id)}/actuator/{_gpio(gpio)}/command"
    dur = wire_duration(duration) if cmd == "ON" else 0
    return Outgoing(topic, _dumps({"command": cmd, "value": v, "duration": dur}), 1, False)


#: the firmware parses emergencies into small fixed documents (DynamicJsonDocument
#: 256 in legacy's handlers and current's per-board one): a long reason would make
#: the parse fail and the stop be dropped. Bytes of UTF-8.
MAX_EMERGENCY_REASON = 60


def _reason(reason: str, limit: int = MAX_EMERGENCY_REASON) -> str:
    b = str(reason).encode("utf-8")[:limit]
    return b.decode("utf-8", "ignore")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts)))


def encode_emergency(reason: str, *, timestamp: float) -> Outgoing:
    """``kaiser/broadcast/emergency``: every board of both generations stops every
    actuator and latches. Current firmware ignores the stop when any of command,
    action, reason, issued_by, timestamp is not a string, so all are strings
    (``timestamp`` ISO 8601 UTC); legacy stops on any JSON that parses."""
    body = {"command": "stop_all", "reason": _reason(reason), "issued_by": "kaiser",
            "timestamp": _iso(timestamp)}
    return Outgoing("kaiser/broadcast/emergency", _dumps(body), 1, False)


def encode_device_emergency(kaiser_id: str, esp_id: str, token: str, reason: str = "", *,
                            clear: bool = False) -> Outgoing:
    """``actuator/emergency`` for one board: ``emergency_stop`` (or ``clear_emergency``
    with ``clear``). Both generations read only ``command`` and ``auth_token``:
    legacy requires the board's stored token (the esp id unless one was set),
    current checks it only when one is set. ``token`` must be ASCII."""
    if not isinstance(token, str) or not token or not token.isascii() or len(token) > 64:
        raise CodecError("an emergency token must be 1-64 ASCII characters")
    body: dict[str, Any] = {"command": "clear_emergency" if clear else "emergency_stop", "auth_token": token}
    if not clear and reason:
        body["reason"] = _reason(reason)
    return Outgoing(f"kaiser/{kaiser_id}/esp/{_esp(esp_id)}/actuator/emergency", _dumps(body), 1, False)


def sensor_item(s: Sensor) -> dict[str, Any]:
    """One sensor as the firmware's config item: gpio, sensor_type, sensor_name,
    subzone_id (when set), active, raw_mode (always true: the server computes
    values), i2c_address / onewire_address when declared."""
    item: dict[str, Any] = {"gpio": _gpio(s.gpio), "sensor_type": s.type.lower(), "sensor_name": s.name}
    if s.subzone:
        item["subzone_id"] = s.subzone
    item["active"] = True
    item["raw_mode"] = True
    if s.i2c_address is not None:
        item["i2c_address"] = s.i2c_address
    if s.onewire_address:
        item["onewire_address"] = s.onewire_address
    return item


def actuator_item(a: Actuator) -> dict[str, Any]:
    """One actuator as the firmware's config item: gpio, actuator_type,
    actuator_name, aux_gpio / subzone_id (when set), active, critical,
    inverted_logic, default_state, default_pwm (0-255)."""
    item: dict[str, Any] = {"gpio": _gpio(a.gpio), "actuator_type": a.type, "actuator_name": a.name}
    if a.aux_gpio is not None:
        item["aux_gpio"] = _gpio(a.aux_gpio)
    if a.subzone:
        item["subzone_id"] = a.subzone
    item.update(active=True, critical=bool(a.critical), inverted_logic=bool(a.inverted_logic),
                default_state=bool(a.default_state), default_pwm=255 if a.default_state else 0)
    return item


#: required fields of a config item (the firmware refuses an item without them, a
#: removal included)
SENSOR_REQUIRED = ("gpio", "sensor_type", "sensor_name")
ACTUATOR_REQUIRED = ("gpio", "actuator_type", "actuator_name")


def removal(item: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The item that removes ``item`` from a board: its required fields and
    ``active: false`` (boards never drop an item a push leaves out)."""
    keys = SENSOR_REQUIRED if kind == "sensor" else ACTUATOR_REQUIRED
    out = {k: item[k] for k in keys if k in item}
    if item.get("onewire_address"):
        out["onewire_address"] = item["onewire_address"]  # current addresses ds18b20s by ROM code
    if item.get("i2c_address") is not None:
        out["i2c_address"] = item["i2c_address"]
    out["active"] = False
    return out


#: the largest config a board takes, per generation and board kind (PROTOCOL.md
#: "Config": legacy counts the whole MQTT packet, current the payload)
LEGACY_PACKET_LIMIT = {"esp32dev": 2048, "xiao_esp32c3": 1024}
CURRENT_PAYLOAD_LIMIT = 4351
LEGACY_HALF_LIMIT = 1800  # bytes of one half's JSON text; legacy parses each in a 4096 B document


def config_limit(generation: str, board: str | None, topic: str) -> int:
    """Payload bytes a config push may have for this board (``generation`` legacy,
    current or auto; ``auto`` takes the smaller of both)."""
    legacy = LEGACY_PACKET_LIMIT.get(board or "esp32dev", 1024) - (len(topic.encode()) + 2 + 5)
    if generation == "current":
        return CURRENT_PAYLOAD_LIMIT
    return min(legacy, CURRENT_PAYLOAD_LIMIT)


def encode_configs(kaiser_id: str, esp_id: str, sensors: list[dict[str, Any]],
                   actuators: list[dict[str, Any]], correlation_ids: Iterable[str], *,
                   generation: str = "auto", board: str | None = None) -> list[Outgoing]:
    """``config`` pushes carrying these items, split so that each fits the board
    (see config_limit), each with the next id from ``correlation_ids``. Push i
    carries the i-th share of both kinds, so a legacy board sees an empty half
    only when the device has fewer items of that kind than pushes. Never
    retained. Raises CodecError when one item alone does not fit."""
    topic = f"kaiser/{kaiser_id}/esp/{_esp(esp_id)}/config"
    limit = config_limit(generation, board, topic)
    ids = iter(correlation_ids)
    for n in range(1, len(sensors) + len(actuators) + 2):
        s_parts = _split(sensors, n)
        a_parts = _split(actuators, n)
        bodies = [(s_parts[i], a_parts[i]) for i in range(n)]
        sized = [_dumps({"correlation_id": "x" * 48, "sensors": s, "actuators": a}) for s, a in bodies]
        if all(len(b) <= limit for b in sized) and (generation == "current" or all(
                len(_dumps({"s": s})) <= LEGACY_HALF_LIMIT and len(_dumps({"a": a})) <= LEGACY_HALF_LIMIT
                for s, a in bodies)):
            return [Outgoing(topic, _dumps({"correlation_id": next(ids), "sensors": s, "actuators": a}), 1, False)
                    for s, a in bodies]
        if n > len(sensors) and n > len(actuators):
            break
    raise CodecError(f"a config item for {esp_id} does not fit the board's {limit}-byte limit")


def _split(items: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """``items`` in ``n`` consecutive shares of nearly equal count."""
    q, r = divmod(len(items), n)
    out, i = [], 0
    for k in range(n):
        j = i + q + (1 if k < r else 0)
        out.append(items[i:j])
        i = j
    return out


ACK_STATUSES = ("online", "pending_approval", "rejected", "error")


def encode_heartbeat_ack(kaiser_id: str, esp_id: str, *, server_time: float, status: str = "online",
                         config_available: bool = False, handover_epoch: int | None = None,
                         qos: int = 1) -> Outgoing:
    """``system/heartbeat/ack``. Current firmware requires ``status`` and a
    ``handover_epoch`` that is a JSON integer >= 1 and, after the board was
    offline, equal to its own counter: pass the board's ``active_handover_epoch``;
    None or 0 (a legacy board, a board that never counted) sends 1.
    ``server_time``: Unix seconds, sent as an integer."""
    if status not in ACK_STATUSES:
        raise CodecError(f"heartbeat ack status must be one of {', '.join(ACK_STATUSES)}, got {status!r}")
    if not math.isfinite(server_time):
        raise CodecError(f"server_time must be finite, got {server_time!r}")
    epoch = handover_epoch if isinstance(handover_epoch, int) and not isinstance(handover_epoch, bool) \
        and 1 <= handover_epoch <= 0xFFFFFFFF else 1
    body = {"status": status, "config_available": bool(config_available),
            "server_time": int(server_time), "handover_epoch": epoch}
    return Outgoing(f"kaiser/{kaiser_id}/esp/{_esp(esp_id)}/system/heartbeat/ack", _dumps(body), qos, False)


def encode_server_status(kaiser_id: str, *, online: bool, timestamp: float,
                         reason: str | None = None) -> Outgoing:
    """``server/status``, retained. Offline carries a reason: ``graceful_shutdown``
    (clean stop) or ``unexpected_disconnect`` (the last will; the default)."""
    body: dict[str, Any] = {"status": "online" if online else "offline"}
    if not online:
        body["reason"] = reason or "unexpected_disconnect"
    body["timestamp"] = int(timestamp)
    return Outgoing(f"kaiser/{kaiser_id}/server/status", _dumps(body), 1, True)


# --------------------------------------------------------------------------
# The firmware side (simulated boards, tests): encode what an ESP32 sends,
# decode what the server sends. Both generations.

#: message kind -> topic tail below kaiser/{k}/esp/{esp}/ ("{gpio}" filled in)
DEVICE_TAILS: dict[str, str] = {
    kind: "/".join("{gpio}" if p == "+" else p for p in tail) for tail, kind in _TAILS.items()
}


def encode_device(kaiser_id: str, esp_id: str, kind: str, body: Mapping[str, Any], *,
                  gpio: int | None = None, qos: int = 1, retain: bool = False) -> Outgoing:
    """Any ESP32-to-server message: ``kind`` as in DEVICE_TAILS, ``body`` the payload."""
    tail = DEVICE_TAILS.get(kind)
    if tail is None:
        raise CodecError(f"unknown device message kind {kind!r} ({', '.join(DEVICE_TAILS)})")
    if "{gpio}" in tail:
        if gpio is None or not (0 <= gpio <= GPIO_MAX or (kind == "actuator_alert" and gpio == BOARD_GPIO)):
            raise CodecError(f"{kind} needs a gpio 0-{GPIO_MAX}, got {gpio!r}")
        tail = tail.replace("{gpio}", str(gpio))
    return Outgoing(f"kaiser/{kaiser_id}/esp/{_esp(esp_id)}/{tail}", _dumps(body), qos, retain)


def reading_body(esp_id: str, gpio: int, sensor_type: str, *, ts: float, raw: float | None = None,
                 value: float | None = None, generation: str = "current", unit: str = "",
                 quality: str = "good", zone_id: str = "", subzone_id: str = "",
                 seq: int | None = None) -> dict[str, Any]:
    """A reading payload as each generation spells it. ``ts``: Unix seconds (current)
    or milliseconds since boot (legacy)."""
    if generation == "legacy":
        body: dict[str, Any] = {"esp_id": esp_id, "zone_id": zone_id, "subzone_id": subzone_id,
                                "gpio": gpio, "sensor_type": sensor_type}
        if raw is not None:
            body["raw_value"] = raw
        body["processed_value"] = value if value is not None else 0
        body.update(unit=unit, quality=quality, timestamp=int(ts))
        return body
    body = {"esp_id": esp_id}
    if seq is not None:
        body["seq"] = seq
    body.update(zone_id=zone_id, subzone_id=subzone_id, gpio=gpio, sensor_type=sensor_type)
    if raw is not None:
        body["raw"] = raw
    body.update(value=value if value is not None else 0, unit=unit, quality=quality, ts=int(ts),
                time_valid=True, raw_mode=raw is not None)
    return body


def encode_reading(kaiser_id: str, esp_id: str, gpio: int, sensor_type: str, *, ts: float,
                   raw: float | None = None, value: float | None = None,
                   generation: str = "current", **extra: Any) -> Outgoing:
    """``sensor/{gpio}/data`` as a board sends it. Legacy boards publish QoS 0 retained."""
    body = reading_body(esp_id, gpio, sensor_type, ts=ts, raw=raw, value=value,
                        generation=generation, **extra)
    legacy = generation == "legacy"
    return encode_device(kaiser_id, esp_id, "sensor_data", body, gpio=gpio,
                         qos=0 if legacy else 1, retain=legacy)


def encode_heartbeat(kaiser_id: str, esp_id: str, *, ts: float, uptime: float, heap_free: int = 180000,
                     wifi_rssi: int = -60, sensor_count: int = 0, actuator_count: int = 0,
                     zone_id: str = "", generation: str = "current") -> Outgoing:
    """``system/heartbeat`` as a board sends it (``uptime`` in seconds)."""
    body: dict[str, Any] = {"esp_id": esp_id, "zone_id": zone_id, "master_zone_id": "",
                            "zone_assigned": bool(zone_id), "ts": int(ts), "uptime": int(uptime),
                            "heap_free": heap_free, "wifi_rssi": wifi_rssi,
                            "sensor_count": sensor_count, "actuator_count": actuator_count}
    if generation == "current":
        body["time_valid"] = True
    return encode_device(kaiser_id, esp_id, "heartbeat", body)
