"""What both El Trabajante generations share: identity, clock, pins, the actuator
manager, the sensor table and the publish path.

The twin never reads a clock: every call passes ``now`` (Unix seconds). A board
boots at the ``now`` it was made with (``millis()`` counts from there) and is
connected to the broker only after :meth:`Board.connect`.

Everything a board publishes goes through :meth:`Board._publish`, which applies
the generation's transport (legacy: PubSubClient QoS 0, "QoS 1" messages
retained; current esp32dev: ESP-IDF MQTT, QoS as asked, never retained, and the
registration gate; current XIAO: PubSubClient QoS 0, never retained).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.codec import Outgoing
from engine.firmware import actuators as drv
from engine.firmware import ajson
from engine.firmware.actuators import Actuator, ActuatorConfig
from engine.firmware.hardware import BoardSpec, Pins, capability, server_type, spec
from engine.firmware.scanner import arduino_float

#: SafetyController RecoveryConfig.verification_timeout_ms: a clear within 5 s of the stop fails
VERIFICATION_TIMEOUT_S = 5.0
#: actuator status for every actuator every 30 s (legacy main.cpp loop(); current
#: communication_task.cpp ACTUATOR_STATUS_INTERVAL_MS)
STATUS_INTERVAL_S = 30.0
#: the boot counter is reset after 60 s of stable running; more than 5 boots before that
#: is a boot loop (main.cpp setup(): safe mode without WiFi/MQTT)
STABLE_AFTER_S = 60.0


@dataclass
class Sensor:
    """One configured sensor (``SensorConfig``)."""

    gpio: int
    sensor_type: str
    name: str
    active: bool = True
    raw_mode: bool = True
    subzone_id: str = ""
    onewire_address: str = ""
    i2c_address: int = 0
    measurement_interval_s: int = 30
    operating_mode: str = "continuous"


class Board:
    """A model of one El Trabajante board. Use :func:`engine.firmware.new_board`.

    Public state for assertions: ``registered``, ``latched`` (some actuator holds
    an emergency latch), ``safe_state``, ``epoch``, ``actuators`` (gpio -> item),
    ``sensors`` (gpio -> first sensor on that gpio; ``sensor_list`` has all),
    ``refusals`` ((what, why) for every message refused or ignored).
    """

    generation = "?"

    def __init__(self, esp_id: str, *, kaiser_id: str = "god", board_kind: str = "esp32dev",
                 emergency_token: str | None = None, production: bool = False, now: float = 0.0) -> None:
        self.esp_id = esp_id
        self.kaiser_id = kaiser_id
        self.board_kind = board_kind
        self.production = production
        self.spec: BoardSpec = spec(self.generation, board_kind)
        self.refusals: list[tuple[str, str]] = []
        self.zone_id = ""
        self.master_zone_id = ""
        self.zone_assigned = False
        self.boot_count = 0
        self.boot_loop = False
        self.factory_reset = False
        self.connected = False
        self._connects = 0
        self._now = now
        self._out: list[Outgoing] = []
        # NVS (survives reboot)
        self.nvs: dict[str, Any] = {}
        self._init_nvs(emergency_token)
        self._boot(now, reason="POWERON")

    # ----------------------------------------------------------------- hooks
    def _init_nvs(self, emergency_token: str | None) -> None:
        raise NotImplementedError

    def _boot_state(self, now: float) -> None:
        """Generation-specific RAM state at boot."""
        raise NotImplementedError

    def subscriptions(self) -> list[tuple[str, int]]:
        """(topic filter, QoS) exactly as the firmware subscribes right now."""
        raise NotImplementedError

    def will(self) -> Outgoing:
        """The last will the board registered with its current connection."""
        raise NotImplementedError

    def _on_connect(self, now: float, first: bool) -> None:
        raise NotImplementedError

    def _on_disconnect(self, now: float) -> None:
        """Hook: the broker connection was lost."""

    def _route(self, topic: str, payload: bytes, now: float, retained: bool, qos: int) -> None:
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        raise NotImplementedError

    def _due(self) -> list[float]:
        raise NotImplementedError

    def _transport(self, topic: str, payload: str, qos: int) -> Outgoing | None:
        raise NotImplementedError

    def _sensor_payload(self, s: Sensor, wire_type: str, raw: float, value: float, unit: str,
                        quality: str, now: float) -> None:
        """Publish one reading (``SensorManager::publishSensorReading``)."""
        raise NotImplementedError

    # ------------------------------------------------------------- boot/life
    def _boot(self, now: float, reason: str) -> None:
        self._boot_at = now
        self._now = now
        self.reset_reason = reason
        self.boot_count = int(self.nvs.get("boot_count", 0)) + 1
        self.nvs["boot_count"] = self.boot_count
        self.boot_loop = self.boot_count > 5  # main.cpp: >5 boots less than 60 s apart
        self._stable = False
        self.connected = False
        self._connects = 0
        self.pins = Pins(self.spec, bus_sharing=self.generation == "current")
        self._pwm_channels: set[int] = set()
        self._slots: list[Actuator | None] = [None] * self.spec.max_actuators
        #: ActuatorManager::actuator_count_ (getActiveActuatorCount: heartbeat actuator_count)
        self.actuator_count = 0
        self.sensor_list: list[Sensor] = []
        self.emergency_state = "normal"  # SafetyController: normal|active|clearing|resuming
        self._emergency_at: float | None = None
        self._last_status_ms = 0
        i2c_sda, i2c_scl = self.spec.i2c_pins
        self.pins.request(i2c_sda, "system")  # I2CBusManager::begin() at boot
        self.pins.request(i2c_scl, "system")
        self._boot_state(now)

    def provision(self, config: bytes, now: float) -> None:
        """The board was set up in an earlier life with this config push (for
        simulators: boards in the field keep their config). It stores what its
        firmware stores in NVS (legacy: sensors only) and boots at ``now`` with
        that. Its answers are discarded; the push passes no gate or admission."""
        self.connected = True
        self._provisioning()
        try:
            self._collect(lambda: self._route(self._topic("config"), config, now, False, 0))
        finally:
            self.connected = False
        self.nvs["boot_count"] = max(0, self.boot_count - 1)
        self._boot(now, self.reset_reason)

    def _provisioning(self) -> None:
        """Hook: open whatever gate stands between a config push and its handler."""

    def reboot(self, now: float, *, reason: str = "SW") -> list[Outgoing]:
        """Restart the board (RAM lost, NVS kept) and reconnect. Returns what it
        publishes when it is back (the broker publishes its last will; the
        twin does not)."""
        def run() -> None:
            self._advance(now)
            self._boot(now, reason)
            self._connect(now)
        return self._collect(run)

    def connect(self, now: float) -> list[Outgoing]:
        """(Re)connect to the broker; what the board publishes right away."""
        def run() -> None:
            self._advance(now)
            self._connect(now)
        return self._collect(run)

    def _connect(self, now: float) -> None:
        if self.boot_loop:
            self.refusals.append(("connect", "BOOT_LOOP: more than 5 boots within 60 s, no WiFi/MQTT"))
            return
        if self.factory_reset:
            self.refusals.append(("connect", "FACTORY_RESET: no WiFi config, provisioning access point only"))
            return
        if self.connected:
            self._lose_connection(now)
        self.connected = True
        first = self._connects == 0
        self._connects += 1
        self._on_connect(now, first)

    def disconnect(self, now: float) -> list[Outgoing]:
        """The broker connection drops (the broker then publishes the last will)."""
        def run() -> None:
            self._advance(now)
            if self.connected:
                self._lose_connection(now)
        return self._collect(run)

    def _lose_connection(self, now: float) -> None:
        self.connected = False
        self._on_disconnect(now)

    # -------------------------------------------------------------- messages
    def receive(self, topic: str, payload: bytes, now: float, retained: bool = False,
                qos: int = 1) -> list[Outgoing]:
        """A message the broker delivers (``qos``: the publisher's QoS). A
        retained message is handled as live: neither generation looks at the flag."""
        def run() -> None:
            self._advance(now)
            if not self.connected:
                self.refusals.append(("topic", f"not connected: {topic}"))
                return
            sub_qos = next((q for f, q in self.subscriptions() if topic_matches(f, topic)), None)
            if sub_qos is None:
                self.refusals.append((_kind_of(topic), f"not subscribed: {topic}"))
                return
            self._route(topic, bytes(payload), now, retained, min(qos, sub_qos))
        return self._collect(run)

    def tick(self, now: float) -> list[Outgoing]:
        """Everything due up to ``now``: heartbeats, auto-offs, timeouts."""
        return self._collect(lambda: self._advance(now))

    def next_due(self) -> float | None:
        """When :meth:`tick` next has something to do (Unix seconds), or None."""
        due = [t for t in self._due() if t is not None]
        for a in self._actuators():
            t = drv.next_due(a)
            if t is not None:
                due.append(t)
        if not self._stable and self.boot_count > 1:
            due.append(self._boot_at + STABLE_AFTER_S + 0.001)
        return min(due) if due else None

    def _advance(self, now: float) -> None:
        """Run the firmware's loops for the time between the last call and ``now``
        (each due instant in order)."""
        for _ in range(10000):
            nxt = self.next_due()
            if nxt is None or nxt > now:
                break
            self._run(max(nxt, self._now))
        self._run(max(now, self._now))

    def _run(self, t: float) -> None:
        self._now = t
        if not self._stable and t - self._boot_at > STABLE_AFTER_S:
            self._stable = True
            if self.boot_count > 1:
                self.boot_count = 0
                self.nvs["boot_count"] = 0
        for a in self._actuators():
            drv.loop(a, t)
        self._tick(t)

    def _collect(self, fn: Any) -> list[Outgoing]:
        """Run ``fn`` and return what the board published meanwhile."""
        outer = self._out
        self._out = []
        try:
            fn()
            return self._out
        finally:
            self._out = outer

    # ------------------------------------------------------------- publishing
    def _publish(self, topic: str, payload: str, qos: int = 1) -> None:
        if not self.connected:
            return
        o = self._transport(topic, payload, qos)
        if o is not None:
            self._out.append(o)

    def _topic(self, tail: str) -> str:
        return f"kaiser/{self.kaiser_id}/esp/{self.esp_id}/{tail}"

    def millis(self, now: float | None = None) -> int:
        t = self._now if now is None else now
        return round((t - self._boot_at) * 1000) & 0xFFFFFFFF

    def uptime(self, now: float | None = None) -> int:
        return self.millis(now) // 1000

    # ------------------------------------------------------------ public state
    @property
    def actuators(self) -> dict[int, Actuator]:
        return {a.gpio: a for a in self._actuators()}

    @property
    def sensors(self) -> dict[int, Sensor]:
        out: dict[int, Sensor] = {}
        for s in self.sensor_list:
            out.setdefault(s.gpio, s)
        return out

    @property
    def latched(self) -> bool:
        """Some configured actuator is held by an emergency stop (commands refused)."""
        return any(a.emergency_stopped for a in self._actuators())

    @property
    def registered(self) -> bool:
        raise NotImplementedError

    @property
    def safe_state(self) -> bool:
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        return 0

    def _actuators(self) -> Iterable[Actuator]:
        return [a for a in self._slots if a is not None]

    def _find(self, gpio: int) -> Actuator | None:
        return next((a for a in self._slots if a is not None and a.gpio == gpio), None)

    # ------------------------------------------------------- actuator manager
    def status_payload(self, a: Actuator) -> str:
        raise NotImplementedError

    def alert_payload(self, gpio: int, alert_type: str, message: str) -> str:
        raise NotImplementedError

    def _status(self, a: Actuator) -> None:
        """``ActuatorManager::publishActuatorStatus``."""
        self._publish(self._topic(f"actuator/{a.gpio}/status"), self.status_payload(a), 1)

    def _alert(self, gpio: int, alert_type: str, message: str) -> None:
        """``ActuatorManager::publishActuatorAlert``."""
        self._publish(self._topic(f"actuator/{gpio}/alert"), self.alert_payload(gpio, alert_type, message), 1)

    def _all_status(self) -> None:
        for a in self._actuators():
            self._status(a)

    def control_binary(self, gpio: int, state: bool, now: float) -> bool:
        """``ActuatorManager::controlActuatorBinary``: refused for an unknown gpio
        or a latched actuator; current firmware does nothing (and publishes
        nothing) when the actuator already believes it is in that state."""
        a = self._find(gpio)
        if a is None or a.emergency_stopped:
            return False
        if self.generation == "current" and a.cfg_state == state:
            return True
        ok = drv.set_binary(a, state, now, legacy=self.generation == "legacy")
        if ok:
            self._status(a)
        return ok

    def control_value(self, gpio: int, value: float, now: float) -> bool:
        """``ActuatorManager::controlActuator``: a pwm actuator's value is clamped to
        0.0-1.0 (NaN refused); other types refuse a value outside 0.0-1.0."""
        a = self._find(gpio)
        if a is None or a.emergency_stopped:
            return False
        if a.type == "pwm":
            value = min(max(value, 0.0), 1.0) if value == value else value
        elif not drv.valid_value(a.type, value):
            return False
        ok = drv.set_value(a, value, now, legacy=self.generation == "legacy")
        if ok:
            self._status(a)
        return ok

    def emergency_stop_all(self, now: float, reason: str) -> None:
        """``SafetyController::emergencyStopAll`` + ``ActuatorManager::emergencyStopAll``:
        every actuator off and latched, an ``emergency_stop`` alert each (current
        firmware also publishes each status)."""
        self.emergency_state = "active"
        self._emergency_at = now
        self._on_emergency_stop(now)
        for a in self._actuators():
            drv.emergency_stop(a, now)
            a.emergency_stopped = True
            self._alert(a.gpio, "emergency_stop", "Actuator stopped")
            if self.generation == "current":
                self._status(a)

    def _on_emergency_stop(self, now: float) -> None:
        """Hook (current: the offline manager resets its epochs)."""

    def clear_emergency(self, now: float) -> bool:
        """``SafetyController::clearEmergencyStop``: fails (alert
        ``verification_failed`` on gpio 255) within 5 s of the stop; else every
        actuator's latch is cleared. Switches nothing on."""
        self.emergency_state = "clearing"
        if self._emergency_at is not None and now - self._emergency_at < VERIFICATION_TIMEOUT_S:
            self._alert(255, "verification_failed", "clear_emergency")
            return False
        for a in self._actuators():
            drv.clear_emergency(a)
            a.emergency_stopped = False
        self.emergency_state = "resuming"
        return True

    def resume_operation(self) -> None:
        if self.emergency_state in ("resuming", "active"):
            self.emergency_state = "normal"

    def safe_state_all(self, now: float) -> None:
        """``ActuatorManager::setAllActuatorsToSafeState``: each actuator to its
        ``default_state`` (through controlActuatorBinary: latched ones stay)."""
        for a in list(self._actuators()):
            self.control_binary(a.gpio, a.config.default_state, now)

    def remove_actuator(self, gpio: int, now: float) -> bool:
        """``ActuatorManager::removeActuator``: off, pins released, slot freed."""
        for i, a in enumerate(self._slots):
            if a is not None and a.gpio == gpio:
                drv.set_binary(a, False, now, legacy=self.generation == "legacy")
                drv.end(a, self.pins, self._pwm_channels, now)
                self._slots[i] = None
                self.actuator_count = max(0, self.actuator_count - 1)
                self._persist_actuators()
                return True
        return False

    def _persist_actuators(self) -> None:
        self.nvs["actuators"] = [a.config for a in self._actuators()]

    def _new_actuator(self, config: ActuatorConfig, now: float, count: bool = True) -> bool:
        """Create the driver in the first free slot (``getFreeSlot``, ``createDriver``,
        ``driver->begin``); ``count``: add it to ``actuator_count``."""
        try:
            idx = self._slots.index(None)
        except ValueError:
            return False
        if config.actuator_type not in drv.ACTUATOR_TYPES:
            return False  # createDriver: exact, lower-case type names only
        a = Actuator(config)
        if not drv.begin(a, self.pins, self._pwm_channels, self.spec.pwm_channels):
            return False
        self._slots[idx] = a
        if count:
            self.actuator_count += 1
        self._persist_actuators()
        self._status(a)
        return True

    def has_sensor(self, gpio: int) -> bool:
        return any(s.gpio == gpio for s in self.sensor_list)

    # ------------------------------------------------------------- readings
    def reading(self, gpio: int, now: float, *, raw: float | None = None, value: float | None = None,
                sensor_type: str | None = None, quality: str = "good", unit: str = "",
                onewire_address: str | None = None, i2c_address: int | None = None) -> list[Outgoing]:
        """The board measured ``gpio``: the ``sensor/{gpio}/data`` it publishes, or
        [] while it may not publish data or has no such active sensor.
        ``sensor_type`` picks one value of a multi-value chip (sht31_humidity ...),
        ``onewire_address`` / ``i2c_address`` one of several sensors on the gpio."""
        return self._collect(lambda: self._reading(gpio, now, raw, value, sensor_type, quality, unit,
                                                   onewire_address, i2c_address))

    def _reading(self, gpio: int, now: float, raw: float | None, value: float | None,
                 sensor_type: str | None, quality: str, unit: str, onewire: str | None,
                 i2c: int | None) -> None:
        self._advance(now)
        for s in self.sensor_list:
            if s.gpio != gpio or not s.active:
                continue
            if onewire and s.onewire_address.upper() != onewire.upper():
                continue
            if i2c is not None and s.i2c_address and s.i2c_address != i2c:
                continue
            wire = self._wire_type(s, sensor_type)
            if wire is None:
                continue
            self._sensor_payload(s, wire, 0.0 if raw is None else raw,
                                 0.0 if value is None else value, unit, quality, now)
            return

    def _wire_type(self, s: Sensor, wanted: str | None) -> str | None:
        """``getServerSensorType`` of the configured type, or one value of its chip."""
        own = server_type(self.generation, s.sensor_type)
        if wanted is None or wanted.lower() == own.lower():
            return own
        cap = capability(self.generation, s.sensor_type)
        from engine.firmware.hardware import MULTI_VALUE

        if cap and cap.multi_value and wanted.lower() in MULTI_VALUE.get(cap.device_type, ()):
            return wanted.lower()
        return None

    def press(self, gpio: int, on: bool, now: float) -> list[Outgoing]:
        """Someone switches ``gpio`` on the board itself (a local override through the
        actuator manager: refused while latched). Returns the status it reports."""
        def run() -> None:
            self._advance(now)
            self.control_binary(gpio, on, now)
        return self._collect(run)

    # -------------------------------------------------------------- helpers
    def refuse(self, what: str, why: str) -> None:
        self.refusals.append((what, why))


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT topic filter matching (+ and #)."""
    f = flt.split("/")
    t = topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t):
            return False
        if part != "+" and part != t[i]:
            return False
    return len(f) == len(t)


def _kind_of(topic: str) -> str:
    if topic.endswith("/heartbeat/ack"):
        return "ack"
    if topic.endswith("/config"):
        return "config"
    if topic.endswith("/command") and "/actuator/" in topic:
        return "command"
    if "emergency" in topic:
        return "emergency"
    if topic.endswith("/server/status"):
        return "server_status"
    if topic.endswith("/system/command"):
        return "system"
    return "topic"


def dumps(obj: Any) -> str:
    """serializeJson: compact, UTF-8 kept."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def json_str(s: str) -> str:
    """A value spliced into a hand-built payload between quotes (no escaping, as
    the firmware's ``String`` concatenation)."""
    return s


def fixed3(v: float) -> str:
    return arduino_float(v, 3)


def fit(obj: Any, budget: int) -> Any:
    """A JSON object copied into a document of ``budget`` bytes: members that no
    longer fit are dropped (ArduinoJson copies what it can)."""
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for k, v in obj.items():
        trial = {**out, k: v}
        try:
            need = ajson.memory(dumps(trial).encode())
        except ajson.JsonError:
            break
        if need > budget:
            break
        out = trial
    return out
