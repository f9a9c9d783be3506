"""Actuator drivers as the firmware implements them (both generations).

``services/actuator/actuator_drivers/{pump,pwm,valve}_actuator.cpp``. A relay is
driven by ``PumpActuator`` (``ActuatorManager::createDriver``). Times are seconds
(the twin's clock); the drivers' ``millis()`` arithmetic is kept where it decides
something.

What the board *reports* (``getStatus``: ``state``, ``pwm``) and what the manager
believes (``getConfig().current_state``, used for TOGGLE and the no-op check of
current firmware) are separate, as in the firmware: a valve reports its new
position only once its motor has run (2.5 s per position step), and an
emergency stop of an open valve leaves ``current_state`` true in its config.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.firmware.hardware import Pins
from engine.firmware.scanner import to_float32

#: PumpActuator::RuntimeProtection defaults (pump_actuator.h)
PUMP_MAX_RUNTIME_S = 3600.0
PUMP_MAX_ACTIVATIONS_PER_HOUR = 60
PUMP_COOLDOWN_S = 30.0
#: ValveActuator transition_time_ms_ (5000): half of it per position step
VALVE_STEP_S = 2.5
ACTUATOR_TYPES = ("pump", "pwm", "valve", "relay")


@dataclass
class ActuatorConfig:
    """``ActuatorConfig`` as parsed from a config item (``parseActuatorDefinition``)."""

    gpio: int
    actuator_type: str
    actuator_name: str
    aux_gpio: int = 255
    subzone_id: str = ""
    active: bool = True
    critical: bool = False
    inverted_logic: bool = False
    default_state: bool = False
    default_pwm: int = 0
    max_runtime_ms: int = 3_600_000

    def soft_key(self) -> tuple[object, ...]:
        """The fields current firmware updates in place (R20-P11 soft update)."""
        return (self.actuator_name, self.subzone_id, self.critical, self.inverted_logic,
                self.default_state, self.default_pwm, self.max_runtime_ms)


@dataclass
class Actuator:
    """One configured actuator: driver state plus the manager's bookkeeping.

    ``state``/``pwm`` are what the board reports (0-255 duty), ``value`` the same
    as 0.0-1.0. ``emergency_stopped`` is the manager's latch for this actuator.
    """

    config: ActuatorConfig
    # driver
    running: bool = False                 # pump/relay output
    pwm_value: int = 0                    # pwm driver duty
    position: int = 0                     # valve: 0, 1, 2
    target: int = 0
    moving_since: float | None = None
    move_s: float = 0.0
    driver_estop: bool = False            # the driver's own emergency_stopped_
    cfg_state: bool = False               # driver config_.current_state
    cfg_pwm: int = 0
    activation_start: float | None = None  # pump: switched on at
    accumulated_s: float = 0.0
    last_stop: float | None = None
    activations: deque[float] = field(default_factory=lambda: deque(maxlen=60))
    pwm_channel: int | None = None
    # manager
    emergency_stopped: bool = False
    duration_end_ms: int = 0              # current: F1 auto-off (millis, 32-bit)
    last_command_source: str = ""         # current: command_source in status

    @property
    def gpio(self) -> int:
        return self.config.gpio

    @property
    def type(self) -> str:
        return self.config.actuator_type

    @property
    def name(self) -> str:
        return self.config.actuator_name

    @property
    def active(self) -> bool:
        return self.config.active

    @property
    def kind(self) -> str:
        """Driver kind: pump (also relay), pwm or valve."""
        return "pump" if self.type in ("pump", "relay") else self.type

    @property
    def state(self) -> bool:
        """``getStatus().current_state``."""
        if self.kind == "pump":
            return self.running
        if self.kind == "pwm":
            return self.cfg_state
        return self.position > 0

    @property
    def pwm(self) -> int:
        """``getStatus().current_pwm`` (0-255)."""
        if self.kind == "pump":
            return 255 if self.running else 0
        if self.kind == "pwm":
            return self.pwm_value
        return self.position * 127

    @property
    def value(self) -> float:
        return self.pwm / 255.0

    def runtime_ms(self, now: float) -> int:
        if self.kind == "pump" and self.running and self.activation_start is not None:
            return int((self.accumulated_s + now - self.activation_start) * 1000)
        return int(self.accumulated_s * 1000) if self.kind == "pump" else 0


# --------------------------------------------------------------------------
# driver operations (begin / setBinary / setValue / emergencyStop / loop / end)


def begin(a: Actuator, pins: Pins, pwm_channels_used: set[int], max_channels: int) -> bool:
    """``driver->begin(config)``: reserve pins; False when a pin is refused."""
    c = a.config
    if a.kind == "pump":
        if not pins.request(c.gpio, "actuator"):
            return False
        if not pins.output(c.gpio):
            pins.release(c.gpio)
            return False
        a.running = c.default_state  # digitalWrite(default_state) at begin
        a.cfg_state = a.running
        a.cfg_pwm = 255 if a.running else 0
        return True
    if a.kind == "pwm":
        free = next((ch for ch in range(max_channels) if ch not in pwm_channels_used), None)
        if free is None or not pins.request(c.gpio, "actuator"):
            return False
        pwm_channels_used.add(free)
        a.pwm_channel = free
        a.pwm_value = 0
        a.cfg_state, a.cfg_pwm = False, 0
        return True
    # valve: direction pin = gpio, enable pin = aux_gpio or gpio + 1 (uint8)
    enable = c.aux_gpio if c.aux_gpio != 255 else (c.gpio + 1) & 0xFF
    if enable == 255:
        return False
    if not pins.request(c.gpio, "actuator"):
        return False
    if not pins.request(enable, "actuator"):
        pins.release(c.gpio)
        return False
    if not (pins.output(c.gpio) and pins.output(enable)):
        pins.release(c.gpio)
        pins.release(enable)
        return False
    a.position = a.target = 0
    a.cfg_state, a.cfg_pwm = False, 0
    return True


def end(a: Actuator, pins: Pins, pwm_channels_used: set[int], now: float) -> None:
    """``driver->end()``: output off, pins released."""
    if a.kind == "pump":
        _pump_apply(a, False, True, now, legacy=True)
        pins.release(a.gpio)
    elif a.kind == "pwm":
        if a.pwm_channel is not None:
            pwm_channels_used.discard(a.pwm_channel)
        pins.release(a.gpio)
    else:
        _valve_stop(a)
        enable = a.config.aux_gpio if a.config.aux_gpio != 255 else (a.gpio + 1) & 0xFF
        pins.release(a.gpio)
        pins.release(enable)
    a.driver_estop = False


def _pump_can_activate(a: Actuator, now: float) -> bool:
    """``PumpActuator::canActivate``: cumulative runtime cap with cooldown, and at
    most 60 switch-ons in the last hour."""
    if a.accumulated_s * 1000 >= PUMP_MAX_RUNTIME_S * 1000 and a.last_stop is not None \
            and now - a.last_stop < PUMP_COOLDOWN_S:
        return False
    recent = sum(1 for t in a.activations if t >= now - 3600.0)
    return recent < PUMP_MAX_ACTIVATIONS_PER_HOUR


def _pump_apply(a: Actuator, state: bool, force: bool, now: float, *, legacy: bool) -> bool:
    """``PumpActuator::applyState``."""
    if not force and a.driver_estop:
        return False
    if state and not force and not _pump_can_activate(a, now):
        return False
    if state == a.running:
        return True
    if state:
        a.activation_start = now
        a.activations.append(now)
    elif a.activation_start is not None:
        a.accumulated_s += now - a.activation_start
        a.activation_start = None
        a.last_stop = now
    a.running = state
    a.cfg_state = state
    a.cfg_pwm = 255 if state else 0
    return True


def _pwm_apply(a: Actuator, value: float) -> bool:
    """``PWMActuator::setValue``: refused outside 0.0-1.0 (NaN too); duty is
    ``uint8_t(value * 255.0f)`` (truncated)."""
    if a.driver_estop:
        return False
    if not (0.0 <= value <= 1.0):
        return False
    duty = int(to_float32(to_float32(value) * 255.0))
    a.pwm_value = duty
    a.cfg_pwm = duty
    a.cfg_state = duty > 0
    return True


def _valve_stop(a: Actuator) -> None:
    """``ValveActuator::stopMovement``: the motor stops, the target is reached."""
    a.moving_since = None
    a.move_s = 0.0
    a.position = a.target
    a.cfg_state = a.position > 0
    a.cfg_pwm = a.position * 127


def _valve_move(a: Actuator, target: int, now: float) -> bool:
    """``ValveActuator::moveToPosition``."""
    target = min(target, 2)
    moving = a.moving_since is not None
    if target == a.position and not moving:
        return True
    delta = target - a.position
    if delta == 0:
        a.target = target
        _valve_stop(a)
        return True
    a.move_s = abs(delta) * VALVE_STEP_S
    a.moving_since = now
    a.driver_estop = False  # moveToPosition clears the driver's emergency flag
    a.target = target
    return True


def set_binary(a: Actuator, state: bool, now: float, *, legacy: bool) -> bool:
    """``driver->setBinary(state)``."""
    if a.kind == "pump":
        return _pump_apply(a, state, False, now, legacy=legacy)
    if a.kind == "pwm":
        return _pwm_apply(a, 1.0 if state else 0.0)
    return _valve_move(a, 2 if state else 0, now)


def set_value(a: Actuator, value: float, now: float, *, legacy: bool) -> bool:
    """``driver->setValue(normalized)``: pump/relay on at >= 0.5, valve positions
    at 0.33/0.66, pwm duty."""
    if a.kind == "pump":
        return _pump_apply(a, value >= 0.5, False, now, legacy=legacy)
    if a.kind == "pwm":
        return _pwm_apply(a, value)
    if a.driver_estop:
        return False
    v = min(max(value, 0.0), 1.0) if value == value else value
    target = 2 if v >= 0.66 else (1 if v >= 0.33 else 0)
    return _valve_move(a, target, now)


def emergency_stop(a: Actuator, now: float) -> None:
    """``driver->emergencyStop()``."""
    a.driver_estop = True
    if a.kind == "pump":
        _pump_apply(a, False, True, now, legacy=True)
    elif a.kind == "pwm":
        a.pwm_value = 0
        a.cfg_pwm = 0
        a.cfg_state = False
    else:
        _valve_stop(a)  # config_.current_state follows the target reached ...
        a.position = a.target = 0  # ... then the valve is closed without updating it


def clear_emergency(a: Actuator) -> bool:
    """``driver->clearEmergency()`` (always succeeds)."""
    a.driver_estop = False
    return True


def loop(a: Actuator, now: float) -> None:
    """``driver->loop()``: a valve finishes its movement."""
    if a.kind == "valve" and a.moving_since is not None and now - a.moving_since >= a.move_s:
        _valve_stop(a)


def next_due(a: Actuator) -> float | None:
    if a.kind == "valve" and a.moving_since is not None:
        return a.moving_since + a.move_s
    return None


def valid_value(actuator_type: str, value: float) -> bool:
    """``validateActuatorValue`` (models/actuator_types.h): 0.0-1.0 for every type."""
    return 0.0 <= value <= 1.0
