"""What every condition kind shares: the ``Kind`` base class, truth values, leaf
state, what a leaf may read (``Inputs``), and the value and schema helpers.

A condition kind (one module in this package, one entry in ``REGISTRY``) binds:

- its YAML: the selecting key(s), the keys it allows, its JSON Schema fragment,
  its builder, its documentation and an example;
- its meaning: a stable ``key`` (clock-side state carries over reloads by it),
  the ``sensors`` it reads (and which of them the guard ``watched`` for sensor
  loss), how the Rete network tests it (``native`` leaves are tested on a sensor,
  device or actuator fact; every other leaf is a ``b:`` fact that Kaiser's
  clock-side code computes with ``evaluate``), ``evaluate`` itself (three-valued
  truth and the next instant it may change), and ``describe`` (for people).

Truth is three-valued: :data:`TRUE`, :data:`FALSE`, :data:`UNKNOWN` (a reading
that is bad, absent or too old). ``all``/``any``/``not`` follow Kleene's logic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from zoneinfo import ZoneInfo

from engine.errors import EngineError
from engine.model import Condition

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap

TRUE, FALSE, UNKNOWN = 1, 0, -1
Truth = int  # TRUE | FALSE | UNKNOWN

#: largest magnitude a value may have in the network (the C JSON parser's limits)
VALUE_LIMIT = 1e15

SINGLE_OPS = ("above", "below", "at_least", "at_most", "equals")
RANGE_OPS = ("between", "outside")

# JSON Schema building blocks (the $defs are written by engine.config.schema)
S_NUMBER: dict[str, Any] = {"type": "number"}
S_PAIR: dict[str, Any] = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
S_DURATION: dict[str, Any] = {"$ref": "#/$defs/duration"}
S_SENSOR: dict[str, Any] = {"$ref": "#/$defs/sensor_ref"}
S_ACTUATOR: dict[str, Any] = {"$ref": "#/$defs/actuator_ref"}
S_DEVICE: dict[str, Any] = {"$ref": "#/$defs/device_ref"}
S_TIME: dict[str, Any] = {"$ref": "#/$defs/time_of_day"}
S_CONDITION: dict[str, Any] = {"$ref": "#/$defs/condition"}


def obj(props: dict[str, Any], required: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A closed JSON Schema object."""
    s: dict[str, Any] = {"type": "object", "properties": props, "required": required,
                         "additionalProperties": False}
    if extra:
        s.update(extra)
    return s


# --------------------------------------------------------------------------
# What a leaf may read


class Inputs(Protocol):
    """The engine's current inputs, as a leaf sees them (engine.core.BaseEngine)."""

    @property
    def start(self) -> float | None: ...

    @property
    def tzinfo(self) -> ZoneInfo: ...

    def usable(self, ref: str, now: float, limit: float | None = None) -> float | None:
        """The latest reading's value when usable at ``now`` (engine.freshness), else None."""

    def lost_at(self, ref: str, limit: float | None = None) -> float | None:
        """When the latest reading turns unknown (None: it has no usable value)."""

    def recent(self, ref: str) -> Sequence[tuple[float, float]]:
        """(received at, value) of the usable readings kept for ``rises_by``/``falls_by``."""

    def last_data(self, ref: str) -> float | None:
        """When anything (any quality) was last received for ``ref``."""

    def device_status(self, device: str) -> int:
        """1 online, 0 offline, -1 not known yet."""

    def actuator_value(self, ref: str) -> float | None:
        """The duty the actuator last reported, None if never."""


class LeafState:
    """Clock-side state of one leaf: a hysteresis latch, the instant a ``for:``
    started, a ``count`` of satisfying readings, the next pulse of a trigger, and
    the last computed truth."""

    __slots__ = ("count", "latch", "leaf", "nxt", "since", "value")

    def __init__(self, leaf: Condition) -> None:
        self.leaf = leaf
        self.latch = False
        self.since: float | None = None
        self.count = 0
        self.nxt: float | None = None
        self.value: Truth = FALSE

    def dump(self) -> dict[str, object]:
        return {"latch": self.latch, "since": self.since, "next": self.nxt, "count": self.count}

    def load(self, d: dict[str, Any]) -> None:
        self.latch = bool(d.get("latch"))
        since = d.get("since")
        self.since = None if since is None else float(since)
        nxt = d.get("next")
        self.nxt = None if nxt is None else float(nxt)
        self.count = int(d.get("count") or 0)


# --------------------------------------------------------------------------
# The kind


class Kind:
    """One kind of condition. Subclasses set the YAML attributes and override the
    meaning; composite kinds (``all``/``any``/``not``) only build and describe."""

    name: str = ""
    #: the presence of any of these keys selects this kind (checked in registry order)
    selectors: tuple[str, ...] = ()
    #: every key this kind accepts
    keys: tuple[str, ...] = ()
    schema: ClassVar[dict[str, Any]] = {}
    doc: str = ""
    example: str = ""
    #: ``at``/``every``: an instant, only allowed in a ``when``
    trigger: bool = False
    #: ``all``/``any``/``not``: made of other conditions
    composite: bool = False
    #: the model classes this kind builds
    model: tuple[type, ...] = ()

    # -- YAML ----------------------------------------------------------------
    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        raise NotImplementedError

    # -- meaning (leaves) ------------------------------------------------------
    def key(self, c: Any) -> str:
        """A stable name for the leaf (its clock-side state carries over reloads by it)."""
        raise EngineError(f"{self.name} is not a leaf condition")

    def sensors(self, c: Any) -> tuple[str, ...]:
        """Sensor refs the leaf reads."""
        return ()

    def watched(self, c: Any) -> tuple[tuple[str, float | None], ...]:
        """(sensor ref, freshness limit or None for ``stale_after``) the guard watches
        for the actuators of a rule with this leaf (``on_sensor_loss``)."""
        return tuple((s, None) for s in self.sensors(c))

    def refs(self, c: Any) -> tuple[tuple[str, str], ...]:
        """(kind, ref) pairs lint looks up: kind is sensor, actuator or device."""
        return tuple(("sensor", s) for s in self.sensors(c))

    def native(self, c: Any) -> bool:
        """Tested by the network on the thing's own fact (``s:``, ``d:``, ``a:``)."""
        return False

    def fact(self, c: Any) -> str:
        """The id of the fact the network tests for this leaf."""
        return f"b:{self.key(c)}"

    def test(self, c: Any, negated: bool) -> dict[str, object]:
        """The network's test on the leaf's fact (without the id). Negation is strict:
        an unknown leaf satisfies neither the test nor its negation."""
        return {"st": 0 if negated else 1}

    def stateful(self, c: Any) -> bool:
        """Has state that must follow every input (latch, ``for:``, ``count``)."""
        return False

    def history(self, c: Any) -> tuple[str, float] | None:
        """(sensor ref, seconds) of usable readings the engine must keep for it."""
        return None

    def evaluate(self, c: Any, st: LeafState, inputs: Inputs, now: float, reading: bool) -> tuple[Truth, float | None]:
        """Truth at ``now`` and the next instant it may change without an input
        (None: only an input changes it). ``reading``: a reading of one of its
        sensors arrived in this step (``count`` counts only those). Updates ``st``."""
        raise NotImplementedError

    def describe(self, c: Any) -> str:
        return self.name

    # -- triggers ----------------------------------------------------------------
    def first_pulse(self, c: Any, start: float, now: float, tz: ZoneInfo) -> float:
        """The first instant a trigger fires, counted from ``start``, not before ``now``."""
        raise EngineError(f"{self.name} is not a trigger")

    def next_pulse(self, c: Any, fired: float, now: float, tz: ZoneInfo) -> float:
        """The instant after ``now`` at which a trigger that was due at ``fired`` fires again."""
        raise EngineError(f"{self.name} is not a trigger")


# --------------------------------------------------------------------------
# Values


def normalise(value: float) -> float | None:
    """The value as the network sees it: rounded to 1e-9, clamped to +-1e15.

    None for NaN and infinities (such a reading satisfies no comparison)."""
    if value.__class__ is float and -VALUE_LIMIT <= value <= VALUE_LIMIT:  # the hot path (NaN fails both)
        v = round(value, 9)
        return 0.0 if v == 0 else v
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    v = max(-VALUE_LIMIT, min(VALUE_LIMIT, v))
    v = round(v, 9)
    return 0.0 if v == 0 else v


def norm_threshold(value: float | tuple[float, float]) -> float | tuple[float, float]:
    if isinstance(value, tuple):
        lo, hi = (normalise(value[0]), normalise(value[1]))
        return (lo if lo is not None else 0.0, hi if hi is not None else 0.0)
    n = normalise(value)
    return n if n is not None else 0.0


def compare_value(op: str, value: float, threshold: float | tuple[float, float]) -> bool:
    """The comparison semantics on normalised numbers."""
    if isinstance(threshold, tuple):
        lo, hi = threshold
        if op == "between":
            return lo <= value <= hi
        if op == "outside":
            return value < lo or value > hi
        return False
    if op == "above":
        return value > threshold
    if op == "below":
        return value < threshold
    if op == "at_least":
        return value >= threshold
    if op == "at_most":
        return value <= threshold
    if op == "equals":
        return value == threshold
    return False


def hold_value(op: str, value: float, threshold: float | tuple[float, float], h: float) -> bool:
    """Whether a latched (hysteresis) comparison stays true: ``h`` back past the threshold."""
    if isinstance(threshold, tuple):
        lo, hi = threshold
        if op == "between":
            return lo - h <= value <= hi + h
        if op == "outside":
            return value < lo + h or value > hi - h
        return False
    if op in ("above", "at_least"):
        return value > threshold - h if op == "above" else value >= threshold - h
    if op in ("below", "at_most"):
        return value < threshold + h if op == "below" else value <= threshold + h
    if op == "equals":
        return abs(value - threshold) <= h
    return False


def threshold_text(v: float | tuple[float, float]) -> str:
    if isinstance(v, tuple):
        return f"{v[0]:g}..{v[1]:g}"
    return f"{v:g}"


def op_text(op: str, v: float | tuple[float, float]) -> str:
    """``above 28``, ``between 5 and 10`` for people."""
    if isinstance(v, tuple):
        return f"{op} {v[0]:g} and {v[1]:g}" if op == "between" else f"{op} {v[0]:g}-{v[1]:g}"
    return f"{op.replace('_', ' ')} {v:g}"


def earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


# --------------------------------------------------------------------------
# Kleene logic


def all_of(values: Sequence[Truth]) -> Truth:
    """``all``: false if one is false, else unknown if one is unknown, else true."""
    out = TRUE
    for v in values:
        if v == FALSE:
            return FALSE
        if v == UNKNOWN:
            out = UNKNOWN
    return out


def any_of(values: Sequence[Truth]) -> Truth:
    """``any``: true if one is true (even when another is unknown), else unknown if
    one is unknown, else false."""
    out = FALSE
    for v in values:
        if v == TRUE:
            return TRUE
        if v == UNKNOWN:
            out = UNKNOWN
    return out


def not_of(v: Truth) -> Truth:
    return UNKNOWN if v == UNKNOWN else TRUE - v
