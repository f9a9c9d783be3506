"""Kaiser's typed model: what the YAML says, what flows through the engine.

Everything here is a frozen dataclass (or a plain enum) with no behaviour beyond
small lookups. Durations are float seconds, times are Unix seconds (float),
actuator values are duty 0.0-1.0 (``on`` = 1.0, ``off`` = 0.0).

A *ref* names a thing across the deployment: ``north.air_temp`` (sensor),
``north.fan`` (actuator), ``north`` (device).  A multi-value chip (SHT31, BMP280)
declared as one sensor ``climate`` exposes one ref per quantity:
``north.climate.temperature`` and ``north.climate.humidity``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeAlias

# --------------------------------------------------------------------------
# Positions


class Position(NamedTuple):
    """Where something was written: 1-based line and column.

    A named tuple rather than a frozen dataclass: 10,000 rules make ~80,000 of them
    (and hash many), a tuple at a third of the cost."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NOWHERE = Position("<builtin>", 0, 0)

# --------------------------------------------------------------------------
# Devices


ActuatorType = Literal["pump", "valve", "relay", "pwm"]
ACTUATOR_TYPES: tuple[str, ...] = ("pump", "valve", "relay", "pwm")


@dataclass(frozen=True, slots=True)
class Sensor:
    """One sensor on a device. ``type`` is canonical (lower-case, alias resolved)."""

    device: str
    name: str
    gpio: int
    type: str
    calibration: Mapping[str, float] = field(default_factory=dict)
    i2c_address: int | None = None
    onewire_address: str | None = None
    subzone: str | None = None
    #: quantities this sensor yields, e.g. ("temperature", "humidity") for sht31;
    #: empty for a single-value sensor (its ref is device.name).
    quantities: tuple[str, ...] = ()
    pos: Position = NOWHERE

    @property
    def ref(self) -> str:
        return f"{self.device}.{self.name}"

    def refs(self) -> tuple[str, ...]:
        """Every reading ref this sensor yields."""
        if not self.quantities:
            return (self.ref,)
        return tuple(f"{self.ref}.{q}" for q in self.quantities)


@dataclass(frozen=True, slots=True)
class Actuator:
    device: str
    name: str
    gpio: int
    type: str  # one of ACTUATOR_TYPES
    aux_gpio: int | None = None
    critical: bool = False
    inverted_logic: bool = False
    default_state: bool = False
    subzone: str | None = None
    pos: Position = NOWHERE

    @property
    def ref(self) -> str:
        return f"{self.device}.{self.name}"


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    esp_id: str
    zone: str | None = None
    board: str | None = None  # "esp32dev" | "xiao_esp32c3" | None (unknown: no pin checks)
    sensors: tuple[Sensor, ...] = ()
    actuators: tuple[Actuator, ...] = ()
    pos: Position = NOWHERE
    #: El Trabajante generation: "legacy" | "current" | "auto" (told apart at run time)
    firmware: str = "auto"
    #: name of the environment variable holding this board's emergency token (never the token)
    emergency_token_env: str | None = None


# --------------------------------------------------------------------------
# Safety limits


class Code(enum.StrEnum):
    """Why the guard blocked a command (SPEC section 2, safety)."""

    EMERGENCY_STOP_ACTIVE = "EMERGENCY_STOP_ACTIVE"
    ACTUATOR_NOT_CONFIGURED = "ACTUATOR_NOT_CONFIGURED"
    PWM_OUT_OF_RANGE = "PWM_OUT_OF_RANGE"
    GPIO_CONFLICT = "GPIO_CONFLICT"
    DEVICE_OFFLINE = "DEVICE_OFFLINE"
    INTERLOCK = "INTERLOCK"
    MIN_OFF = "MIN_OFF"
    MAX_RUNTIME = "MAX_RUNTIME"
    MAX_STARTS = "MAX_STARTS"
    SENSOR_LOST = "SENSOR_LOST"
    RATE_LIMIT = "RATE_LIMIT"
    CONFLICT = "CONFLICT"


@dataclass(frozen=True, slots=True)
class SafetyDefaults:
    offline_after: float = 90.0
    stale_after: float = 300.0
    max_switches_per_minute: int = 6
    lease: float = 60.0
    pos: Position = NOWHERE


OnSensorLoss = Literal["off", "hold", "on"]
OutOfRange = Literal["block", "clamp"]


@dataclass(frozen=True, slots=True)
class ActuatorLimits:
    actuator: str  # ref
    max_runtime: float | None = None
    min_off: float | None = None
    max_starts: tuple[int, float] | None = None  # (count, per seconds), "6/h" -> (6, 3600)
    on_sensor_loss: OnSensorLoss = "off"
    pwm: tuple[float, float] | None = None
    rate_limit: tuple[int, float] | None = None  # (commands, per seconds)
    pos: Position = NOWHERE
    #: a duty outside ``pwm``: "block" it (PWM_OUT_OF_RANGE) or "clamp" it to the nearest bound
    out_of_range: OutOfRange = "block"


@dataclass(frozen=True, slots=True)
class Interlock:
    """``never_together`` (actuators non-empty) or ``only_if`` (actuator + sensor test)."""

    name: str
    never_together: tuple[str, ...] = ()
    actuator: str | None = None
    only_if: Comparison | None = None
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Safety:
    defaults: SafetyDefaults = SafetyDefaults()
    actuators: Mapping[str, ActuatorLimits] = field(default_factory=dict)
    interlocks: tuple[Interlock, ...] = ()


# --------------------------------------------------------------------------
# Conditions (SPEC section 2). Each type is one registry entry in engine.conditions.

CompareOp = Literal["above", "below", "at_least", "at_most", "equals", "between", "outside"]
COMPARE_OPS: tuple[str, ...] = ("above", "below", "at_least", "at_most", "equals", "between", "outside")


@dataclass(frozen=True, slots=True)
class Comparison:
    """``{sensor: REF, above: x, for: 2m, hysteresis: 1, count: 3, fresh: 2m}``.

    ``count``: true once that many readings in a row satisfy it (0 or 1: one is
    enough). ``fresh``: readings older than this many seconds are unknown for this
    condition (None: ``safety.defaults.stale_after``)."""

    sensor: str
    op: str  # CompareOp
    value: float | tuple[float, float]
    for_: float = 0.0
    hysteresis: float = 0.0
    pos: Position = NOWHERE
    count: int = 0
    fresh: float | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """``{difference: [A, B], above: x}``: compares A - B."""

    a: str
    b: str
    op: str
    value: float | tuple[float, float]
    for_: float = 0.0
    hysteresis: float = 0.0
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Change:
    """``{sensor: REF, rises_by: x, within: 10m}`` (direction "rises") or ``falls_by``."""

    sensor: str
    direction: Literal["rises", "falls"]
    amount: float
    within: float
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class NoData:
    sensor: str
    duration: float
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class DeviceIs:
    device: str
    online: bool
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class ActuatorIs:
    actuator: str
    on: bool
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Minutes after local midnight; ``before < after`` spans midnight. Weekdays 0=mon."""

    after: int | None
    before: int | None
    weekdays: tuple[int, ...] = ()  # empty = every day
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class At:
    """Trigger at local time of day (minutes after midnight); ``when`` only."""

    minute: int
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Every:
    """Trigger every ``interval`` seconds; ``when`` only."""

    interval: float
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Any_:
    items: tuple[Condition, ...]
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition
    pos: Position = NOWHERE


Condition: TypeAlias = (
    Comparison | Difference | Change | NoData | DeviceIs | ActuatorIs | TimeWindow | At | Every
    | All | Any_ | Not
)

# --------------------------------------------------------------------------
# Actions


@dataclass(frozen=True, slots=True)
class Follow:
    """A computed duty: ``{follow: REF, map: [[x0, d0], [x1, d1], ...], step: 0.05}``.

    Piecewise linear through the points (x increasing), flat beyond the ends,
    rounded to 3 decimals. In a ``hold`` it is re-sent when it moves by ``step``."""

    sensor: str
    points: tuple[tuple[float, float], ...]
    step: float = 0.05
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class SetActuator:
    """``{actuator: REF, set: on|off|toggle|0.0-1.0|{follow: ...}, for: 10m}``.

    ``state`` is ``"toggle"``, a duty 0.0-1.0 (on = 1.0, off = 0.0) or a
    :class:`Follow` (a duty computed from a sensor).
    """

    actuator: str
    state: float | Literal["toggle"] | Follow
    for_: float | None = None
    pos: Position = NOWHERE


NotifyLevel = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Notify:
    text: str
    level: str = "info"
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Wait:
    duration: float
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class EmergencyStop:
    target: str  # "all" or a device name
    reason: str
    pos: Position = NOWHERE


Action: TypeAlias = SetActuator | Notify | Wait | EmergencyStop

# --------------------------------------------------------------------------
# Rules and tests


@dataclass(frozen=True, slots=True)
class Rule:
    """``kind == "edge"``: when/then. ``kind == "level"``: while/hold(/release)."""

    name: str
    kind: Literal["edge", "level"]
    condition: Condition
    actions: tuple[Action, ...]  # then: or hold:
    release: tuple[Action, ...] | None = None
    description: str = ""
    priority: int = 0
    cooldown: float = 0.0
    enabled: bool = True
    index: int = 0  # declaration order across the document set (ties in arbitration)
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class TestStep:
    at: float  # seconds after start
    readings: Mapping[str, float | None] = field(default_factory=dict)
    #: optional extra inputs: device online/offline, actuator reported states
    devices: Mapping[str, bool] = field(default_factory=dict)
    actuators: Mapping[str, float] = field(default_factory=dict)
    pos: Position = NOWHERE
    #: ``emergency_stop: all|DEVICE`` / ``reset: all|DEVICE``: through the same guard as the server
    emergency_stop: str | None = None
    reset: str | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    at: float
    kind: Literal["command", "blocked", "notify", "no_command"]
    fields: Mapping[str, object] = field(default_factory=dict)
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class RuleTest:
    __test__ = False  # not a pytest class

    name: str
    start: float  # Unix seconds
    steps: tuple[TestStep, ...]
    expect: tuple[Expectation, ...]
    only_expected: bool = False
    rules: tuple[str, ...] = ()  # optional: restrict to these rules (names checked by lint)
    pos: Position = NOWHERE


@dataclass(frozen=True, slots=True)
class Deployment:
    """A whole document set (every YAML file under the rules dir)."""

    devices: Mapping[str, Device] = field(default_factory=dict)
    safety: Safety = Safety()
    rules: tuple[Rule, ...] = ()
    tests: tuple[RuleTest, ...] = ()
    files: tuple[str, ...] = ()
    tz: str = "UTC"

    # lookups -------------------------------------------------------------
    def sensor(self, ref: str) -> Sensor | None:
        """The sensor for ``dev.name`` or ``dev.name.quantity``."""
        parts = ref.split(".")
        if len(parts) < 2 or parts[0] not in self.devices:
            return None
        for s in self.devices[parts[0]].sensors:
            if s.name == parts[1]:
                if len(parts) == 2 and not s.quantities:
                    return s
                if len(parts) == 3 and parts[2] in s.quantities:
                    return s
                return None
        return None

    def actuator(self, ref: str) -> Actuator | None:
        dev, _, name = ref.partition(".")
        d = self.devices.get(dev)
        if d is None:
            return None
        for a in d.actuators:
            if a.name == name:
                return a
        return None

    def sensor_refs(self) -> list[str]:
        return [r for d in self.devices.values() for s in d.sensors for r in s.refs()]

    def actuator_refs(self) -> list[str]:
        return [a.ref for d in self.devices.values() for a in d.actuators]

    def device_by_esp(self, esp_id: str) -> Device | None:
        for d in self.devices.values():
            if d.esp_id == esp_id:
                return d
        return None


# --------------------------------------------------------------------------
# Runtime values flowing through the engine


Quality = Literal["excellent", "good", "fair", "poor", "bad", "stale", "error"]
USABLE_QUALITY = frozenset({"excellent", "good", "fair", "poor"})


@dataclass(frozen=True, slots=True)
class Reading:
    """One physical value of one sensor ref, already processed (units applied)."""

    sensor: str  # ref, e.g. "north.air_temp" or "north.climate.humidity"
    value: float
    ts: float  # Unix seconds (measurement time; receive time for uptime stamps)
    quality: str = "good"
    unit: str = ""
    retained: bool = False  # a snapshot replayed by the broker: fills state, fires no edge


CommandSource = Literal["rule", "manual", "cli", "safety", "lease", "test"]


@dataclass(frozen=True, slots=True)
class Command:
    """A request to put an actuator in a state. Only the guard turns it into wire traffic.

    ``value``: duty 0.0-1.0 (on = 1.0, off = 0.0). ``duration``: seconds the firmware
    keeps it on before turning it off itself (the lease); None = no lease.
    """

    actuator: str
    value: float
    duration: float | None = None
    source: str = "rule"  # CommandSource
    rule: str | None = None
    priority: int = 0
    reason: str = ""  # human sentence: why it was requested
    toggle: bool = False  # requested as "toggle" (value resolved from state)
    hold: bool = False  # held by a `while` rule: lease = defaults.lease, renewed at half

    @property
    def is_off(self) -> bool:
        return self.value <= 0.0 and not self.toggle


@dataclass(frozen=True, slots=True)
class Allowed:
    command: Command


@dataclass(frozen=True, slots=True)
class Blocked:
    command: Command
    code: Code
    reason: str


Verdict: TypeAlias = Allowed | Blocked


# --------------------------------------------------------------------------
# What the pure core hands to the adapters


@dataclass(frozen=True, slots=True)
class RuleRun:
    """One run of a rule: what triggered it and what it asked for."""

    rule: str
    ts: float
    trigger: Mapping[str, float | None]  # sensor refs (and other facts) that made it true
    actions: tuple[str, ...]  # human-readable summaries of the actions requested
    outcome: str  # "ran" | "released" | "skipped_cooldown" | "suspended" | "error: ..."
    config_version: str = ""


@dataclass(frozen=True, slots=True)
class Notification:
    ts: float
    level: str
    text: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth recording and streaming: safety, emergency, online/offline,
    reloads, malformed input, conflicts. ``kind`` e.g. "safety", "emergency",
    "device", "reload", "malformed", "conflict", "suspended"."""

    ts: float
    kind: str
    severity: str  # "info" | "warning" | "critical"
    subject: str  # device, actuator ref, rule name, or "" for the whole system
    message: str
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmergencyOut:
    """An emergency stop (or reset) the adapters must publish to the firmware.

    ``target`` is "all" or a device name; ``active`` False means a reset (nothing
    is published to boards on reset: a reset only permits a restart)."""

    ts: float
    target: str
    reason: str
    active: bool = True
    who: str = ""


@dataclass(slots=True)
class Outputs:
    """Everything one step of the pure pipeline produced, in order."""

    sent: list[Allowed] = field(default_factory=list)  # commands that passed the guard: publish
    blocked: list[Blocked] = field(default_factory=list)
    runs: list[RuleRun] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    emergencies: list[EmergencyOut] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        self.sent.extend(other.sent)
        self.blocked.extend(other.blocked)
        self.runs.extend(other.runs)
        self.notifications.extend(other.notifications)
        self.events.extend(other.events)
        self.emergencies.extend(other.emergencies)

    def __bool__(self) -> bool:
        return bool(self.sent or self.blocked or self.runs or self.notifications or self.events or self.emergencies)
