"""Decoded sensor messages -> Readings with sensor refs; actuator refs <-> (esp_id, gpio).

Pure: built once per deployment (config version), then only dict lookups.

For each value of a ``SensorData`` the router finds the device by esp id, the
sensor by gpio (several sensors on one bus or OneWire pin are told apart by
type, ``i2c_address`` and ``onewire_address``), and for a multi-value chip the
quantity from the wire ``sensor_type``. Raw values (``raw_mode`` true, or not
sent while a raw value is present) are processed by the sensor library with the
device map's calibration; otherwise the firmware's value is graded by the
library's range. The reading's quality is the worse of the firmware's and the
library's grade. Anything it cannot place comes back as ``Unmapped`` so the
server can record a discovered device or sensor; nothing raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.codec import Outgoing, SensorData, SensorValue, encode_command, normalize_onewire
from engine.errors import UnknownSensorType
from engine.model import Actuator, Command, Deployment, Device, Reading, Sensor
from sensors import grade_quantity, run
from sensors.common import worse
from sensors.registry import Quantity, SensorType, resolve


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A value the device map does not place.

    ``why``: "device" (unknown esp id), "sensor" (no sensor on that gpio),
    "type" (the gpio's sensor has another type), "ambiguous" (several sensors fit
    and no address tells them apart).
    """

    esp_id: str
    gpio: int
    sensor_type: str
    why: str
    message: str
    value: SensorValue
    device: str | None = None  # device name when the esp id is known


@dataclass(slots=True)
class Routed:
    readings: list[Reading] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Slot:
    """One declared sensor, precomputed for routing."""

    sensor: Sensor
    lib: SensorType
    quantity: str | None  # fixed quantity when declared single-valued (sht31_humidity)
    multi: bool  # declared as a whole multi-value chip: refs per quantity
    params: Mapping[str, float]
    onewire: str | None


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the values of one (esp, gpio, wire type, address) go."""

    ref: str
    lib: SensorType
    quantity: Quantity
    calibration: Mapping[str, float]
    params: Mapping[str, float]


class Router:
    """Routing tables of one deployment. ``route(msg)`` is the hot path."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self._devices: dict[str, Device] = {}
        self._slots: dict[tuple[str, int], list[_Slot]] = {}
        self._act_by_pin: dict[tuple[str, int], Actuator] = {}
        self._act_by_ref: dict[str, tuple[str, int, str]] = {}
        #: sensors whose declared type no library knows (lint reports them): ref -> type
        self.unknown_types: dict[str, str] = {}
        self._cache: dict[tuple[str, int, str, int | None, str | None], _Target | tuple[str, str, str | None]] = {}
        for dev in deployment.devices.values():
            self._devices[dev.esp_id] = dev
            for s in dev.sensors:
                try:
                    lib, q = resolve(s.type)
                except UnknownSensorType:
                    self.unknown_types[s.ref] = s.type
                    continue
                params = {k: v for k, v in s.calibration.items() if k in lib.params}
                slot = _Slot(s, lib, q, lib.multi and q is None, params,
                             normalize_onewire(s.onewire_address))
                self._slots.setdefault((dev.esp_id, s.gpio), []).append(slot)
            for a in dev.actuators:
                self._act_by_pin[(dev.esp_id, a.gpio)] = a
                self._act_by_ref[a.ref] = (dev.esp_id, a.gpio, a.type)

    # sensors ---------------------------------------------------------------
    def device(self, esp_id: str) -> Device | None:
        """The device of the map with this esp id."""
        return self._devices.get(esp_id)

    def route(self, msg: SensorData) -> Routed:
        """Every value of a decoded sensor message -> Reading or Unmapped."""
        out = Routed()
        for v in msg.values:
            r = self.reading(msg.esp_id, v, retained=msg.retained)
            if isinstance(r, Reading):
                out.readings.append(r)
            else:
                out.unmapped.append(r)
        return out

    def readings(self, msg: SensorData) -> list[Reading]:
        """Only the readings the device map places (see route for the rest)."""
        return self.route(msg).readings

    def reading(self, esp_id: str, v: SensorValue, *, retained: bool = False) -> Reading | Unmapped:
        """One value -> Reading with its ref, or Unmapped saying why."""
        key = (esp_id, v.gpio, v.sensor_type, v.i2c_address, v.onewire_address)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._target(esp_id, v)
            if len(self._cache) >= 65536:  # unknown boards could grow it without bound
                self._cache.clear()
            self._cache[key] = hit
        if hit.__class__ is not _Target:
            why, message, device = hit  # type: ignore[misc]
            return Unmapped(esp_id, v.gpio, v.sensor_type, why, message, v, device)
        t: _Target = hit
        raw = v.raw
        if raw is not None and (v.raw_mode is not False or v.value is None):
            p = run(t.lib, t.quantity, raw, t.calibration, t.params)
        else:
            p = grade_quantity(t.quantity, v.value)
        q = p.quality if v.quality is None else worse(v.quality, p.quality)
        return Reading(t.ref, p.value, v.ts, q, p.unit, retained)

    def _target(self, esp_id: str, v: SensorValue) -> _Target | tuple[str, str, str | None]:
        """Where values like ``v`` go: a _Target, or (why, message, device name)."""
        slots = self._slots.get((esp_id, v.gpio))
        if slots is None:
            dev = self._devices.get(esp_id)
            if dev is None:
                return "device", f"{esp_id} is not in the device map", None
            return "sensor", f"device {dev.name} ({esp_id}) has no sensor on gpio {v.gpio}", dev.name
        try:
            wire_lib, wire_q = resolve(v.sensor_type)
        except UnknownSensorType:
            wire_lib, wire_q = None, None
        slot, quantity, problem = self._pick(slots, v, wire_lib, wire_q)
        if slot is None:
            return problem[0], problem[1], self._devices[esp_id].name
        s = slot.sensor
        ref = f"{s.device}.{s.name}.{quantity}" if slot.multi else f"{s.device}.{s.name}"
        return _Target(ref, slot.lib, slot.lib.quantity(quantity), s.calibration, slot.params)

    def _pick(self, slots: list[_Slot], v: SensorValue, wire_lib: SensorType | None,
              wire_q: str | None) -> tuple[_Slot | None, str, tuple[str, str]]:
        """The declared sensor a value belongs to, and which quantity it carries."""
        fits: list[tuple[_Slot, str]] = []
        for slot in slots:
            if wire_lib is None:
                # a type the libraries do not know: trust the device map if the pin is
                # unambiguous (not for a whole multi-value chip: which value would it be?)
                if len(slots) == 1 and not slot.multi:
                    fits.append((slot, slot.quantity or slot.lib.quantities[0].name))
                continue
            if slot.lib is not wire_lib:
                continue
            want = wire_q or wire_lib.quantities[0].name
            if slot.quantity is not None and slot.quantity != want:
                continue
            fits.append((slot, want))
        if len(fits) > 1:
            fits = [f for f in fits if _address_fits(f[0], v)] or fits
        if len(fits) == 1:
            return fits[0][0], fits[0][1], ("", "")
        s0 = slots[0].sensor
        if not fits:
            declared = ", ".join(sorted({sl.sensor.type for sl in slots}))
            return None, "", ("type", f"gpio {v.gpio} of {s0.device} is declared as {declared}, "
                                      f"but the board sent sensor_type {v.sensor_type!r}")
        return None, "", ("ambiguous", f"gpio {v.gpio} of {s0.device} has several "
                                       f"{v.sensor_type} sensors; the reading names no matching address")

    # actuators -------------------------------------------------------------
    def actuator_target(self, ref: str) -> tuple[str, int, str]:
        """Actuator ref -> (esp_id, gpio, actuator_type). Raises KeyError naming an unknown ref."""
        hit = self._act_by_ref.get(ref)
        if hit is None:
            raise KeyError(f"unknown actuator {ref!r}")
        return hit

    def actuator_ref(self, esp_id: str, gpio: int) -> str | None:
        """(esp_id, gpio) -> actuator ref, None when the map has no actuator there."""
        a = self._act_by_pin.get((esp_id, gpio))
        return None if a is None else a.ref

    def encode(self, kaiser_id: str, command: Command) -> Outgoing:
        """A guarded Command -> the firmware command message (see codec.command_for).
        Raises KeyError for an unknown actuator, CodecError for an impossible value."""
        esp_id, gpio, typ = self.actuator_target(command.actuator)
        return encode_command(kaiser_id, esp_id, gpio, typ, command.value, command.duration,
                              toggle=command.toggle)

    def quantity(self, ref: str) -> Quantity | None:
        """The unit and valid range behind a sensor ref (None when unknown)."""
        s = self.deployment.sensor(ref)
        if s is None:
            return None
        try:
            lib, q = resolve(s.type)
        except UnknownSensorType:
            return None
        name = ref.rsplit(".", 1)[1] if s.quantities else q
        try:
            return lib.quantity(name)
        except KeyError:
            return None


def _address_fits(slot: _Slot, v: SensorValue) -> bool:
    s = slot.sensor
    if s.i2c_address is not None and v.i2c_address is not None:
        return s.i2c_address == v.i2c_address
    if slot.onewire is not None and v.onewire_address is not None:
        return slot.onewire == v.onewire_address
    # a sensor that declares an address only matches readings that name it
    return s.i2c_address is None and slot.onewire is None
