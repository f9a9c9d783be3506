"""The registry of sensor libraries: canonical names, aliases, quantities.

A *sensor type* (``SensorType``) is one library: a chip or probe. Most yield one
quantity; multi-value chips yield several (sht31: temperature and humidity;
bmp280: pressure and temperature). The firmware names each value with its own
wire type (``sht31_temp``, ``sht31_humidity``); ``resolve`` maps any name, in
any case, to ``(SensorType, quantity or None)``.

Third-party libraries register through the entry point group ``kaiser.sensors``
(the entry point loads a ``SensorType``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.errors import UnknownSensorType


class Processed(NamedTuple):
    """A physical value: ``value`` in ``unit``; ``quality`` excellent..bad.

    Immutable (a named tuple: built once per reading on the hot path, where a
    frozen dataclass costs three times as much to make)."""

    value: float
    unit: str
    quality: str


@dataclass(frozen=True, slots=True)
class Quantity:
    """One physical quantity a sensor type yields, with its valid range in ``unit``."""

    name: str  # "temperature", "humidity", "ph", ...
    unit: str
    min: float
    max: float
    wire_types: tuple[str, ...] = ()  # firmware sensor_type names meaning this quantity


# process(raw, calibration, params, quantity) -> Processed
ProcessFn = Callable[[float, Mapping[str, float], Mapping[str, float], str], Processed]


@dataclass(frozen=True, slots=True)
class SensorType:
    name: str  # canonical, lower-case: "ph", "sht31", ...
    description: str
    quantities: tuple[Quantity, ...]
    process: ProcessFn
    aliases: tuple[str, ...] = ()
    #: calibration parameter -> one-line doc (e.g. {"dry": "raw ADC value in dry air"})
    calibration: Mapping[str, str] = field(default_factory=dict)
    #: extra parameters (e.g. {"temperature": "water temperature for compensation"})
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        return len(self.quantities) > 1

    def quantity(self, name: str | None) -> Quantity:
        if name is None:
            return self.quantities[0]
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(name)


_TYPES: dict[str, SensorType] = {}
_NAMES: dict[str, tuple[SensorType, str | None]] = {}


def register(st: SensorType) -> SensorType:
    """Add a library. Names and aliases are case-insensitive and must be new."""
    names: list[tuple[str, str | None]] = [(st.name, None)]
    names += [(a, None) for a in st.aliases]
    if st.multi:
        names += [(w, q.name) for q in st.quantities for w in q.wire_types]
    for n, _ in names:
        if n.lower() in _NAMES:
            raise ValueError(f"sensor type name {n!r} is already registered")
    _TYPES[st.name] = st
    for n, q in names:
        _NAMES[n.lower()] = (st, q)
    return st


def resolve(type_name: str) -> tuple[SensorType, str | None]:
    """Any spelling of a type (``DS18B20``, ``temperature_sht31``) -> (library, quantity).

    The quantity is None when the name means the whole chip (or a single-value type).
    Raises UnknownSensorType naming it.
    """
    if not _loaded:
        _ensure_loaded()
    # fast path: the firmware and the model already send lower-case names
    hit = _NAMES.get(type_name) if isinstance(type_name, str) else None
    if hit is None:
        hit = _NAMES.get(str(type_name).strip().lower())
        if hit is None:
            raise UnknownSensorType(f"unknown sensor type {type_name!r}")
    return hit


def types() -> Mapping[str, SensorType]:
    _ensure_loaded()
    return dict(_TYPES)


def all_names() -> list[str]:
    """Every accepted spelling (lower-case), for 'did you mean' hints and schemas."""
    _ensure_loaded()
    return sorted(_NAMES)


_loaded = False


def _ensure_loaded() -> None:
    """Import the built-in libraries (each registers itself) and the entry points."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from importlib.metadata import entry_points

    import sensors.builtin  # noqa: F401  (registers the built-in types)

    for ep in entry_points(group="kaiser.sensors"):
        # a broken third-party library must not take the built-in ones down with it
        try:
            obj = ep.load()
            if isinstance(obj, SensorType) and obj.name not in _TYPES:
                register(obj)
        except Exception as exc:
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"


#: entry points that failed to load: name -> reason (shown by docs/tools, never raised)
_BROKEN: dict[str, str] = {}


def broken_plugins() -> Mapping[str, str]:
    """Entry points of group ``kaiser.sensors`` that failed to load, with the reason."""
    _ensure_loaded()
    return dict(_BROKEN)
