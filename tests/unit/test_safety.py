"""The safety guard: each check, each code, leases, emergency stop, persistence."""

from __future__ import annotations

import json

import pytest

from engine.freshness import TICK
from engine.model import (
    Actuator,
    ActuatorLimits,
    Allowed,
    Blocked,
    Code,
    Command,
    Comparison,
    Deployment,
    Device,
    Interlock,
    NoData,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.safety import Guard, guard

T0 = 1_780_000_000.0


def deployment(
    limits: dict[str, ActuatorLimits] | None = None,
    interlocks: tuple[Interlock, ...] = (),
    rules: tuple[Rule, ...] = (),
    defaults: SafetyDefaults | None = None,
) -> Deployment:
    north = Device(
        name="north", esp_id="ESP_N",
        sensors=(
            Sensor("north", "air_temp", 4, "ds18b20"),
            Sensor("north", "soil", 34, "moisture"),
            Sensor("north", "probe", 13, "ds18b20"),
        ),
        actuators=(
            Actuator("north", "pump", 18, "pump"),
            Actuator("north", "fan", 5, "relay"),
            Actuator("north", "heater", 19, "relay"),
            Actuator("north", "vent", 25, "pwm"),
            Actuator("north", "bad", 13, "relay"),  # sits on the probe's GPIO
        ),
    )
    tank = Device(
        name="tank", esp_id="ESP_T",
        sensors=(Sensor("tank", "level", 32, "flow"),),
        actuators=(Actuator("tank", "valve", 16, "valve"),),
    )
    return Deployment(
        devices={"north": north, "tank": tank},
        safety=Safety(defaults=defaults or SafetyDefaults(), actuators=limits or {}, interlocks=interlocks),
        rules=rules,
    )


def on(ref: str, **kw: object) -> Command:
    return Command(ref, 1.0, **kw)  # type: ignore[arg-type]


def off(ref: str, **kw: object) -> Command:
    return Command(ref, 0.0, **kw)  # type: ignore[arg-type]


def blocked_code(v: object) -> Code | None:
    return v.code if isinstance(v, Blocked) else None


def make(**kw: object) -> Guard:
    return Guard(deployment(**kw), assume_online=True, start=T0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# built-in checks


def test_unknown_actuator_is_not_configured_even_for_off() -> None:
    g = make()
    v = g.check(on("north.pmup"), T0)
    assert blocked_code(v) is Code.ACTUATOR_NOT_CONFIGURED
    assert isinstance(v, Blocked) and "did you mean north.pump" in v.reason
    assert blocked_code(g.check(off("north.pmup"), T0)) is Code.ACTUATOR_NOT_CONFIGURED


def test_value_outside_unit_range_and_pwm_range() -> None:
    g = make(limits={"north.vent": ActuatorLimits("north.vent", pwm=(0.1, 0.8))})
    assert blocked_code(g.check(Command("north.fan", 1.5), T0)) is Code.PWM_OUT_OF_RANGE
    assert blocked_code(g.check(Command("north.fan", float("nan")), T0)) is Code.PWM_OUT_OF_RANGE
    v = g.check(Command("north.vent", 0.9), T0)
    assert isinstance(v, Blocked) and v.code is Code.PWM_OUT_OF_RANGE
    assert "0.9" in v.reason and "0.1-0.8" in v.reason
    assert blocked_code(g.check(Command("north.vent", 0.05), T0)) is Code.PWM_OUT_OF_RANGE
    assert isinstance(g.check(Command("north.vent", 0.5), T0), Allowed)
    # limits apply to non-zero values: OFF (0.0) is below 0.1 and still allowed
    assert isinstance(g.check(Command("north.vent", 0.0), T0), Allowed)


def test_actuator_on_a_sensor_gpio_is_blocked() -> None:
    v = make().check(on("north.bad"), T0)
    assert isinstance(v, Blocked) and v.code is Code.GPIO_CONFLICT
    assert "GPIO 13" in v.reason and "north.probe" in v.reason


def test_device_never_seen_is_offline() -> None:
    g = Guard(deployment(), start=T0)
    v = g.check(on("north.fan"), T0)
    assert isinstance(v, Blocked) and v.code is Code.DEVICE_OFFLINE and "north" in v.reason
    g.device_online("ESP_N", True, T0)  # esp_id works as well as the name
    assert isinstance(g.check(on("north.fan"), T0 + 1), Allowed)
    g.device_online("north", False, T0 + 2)
    assert blocked_code(g.check(on("north.heater"), T0 + 2)) is Code.DEVICE_OFFLINE
    assert isinstance(g.check(off("north.fan"), T0 + 3), Allowed)


def test_test_runner_devices_start_online() -> None:
    g = Guard(deployment(), assume_online=True)
    assert isinstance(g.check(on("north.fan"), T0), Allowed)
    g.device_online("north", False, T0)
    assert blocked_code(g.check(on("north.fan"), T0)) is Code.DEVICE_OFFLINE


# --------------------------------------------------------------------------
# configured limits


def test_min_off_sentence_names_limit_and_numbers() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", min_off=120)})
    assert isinstance(g.check(on("north.pump"), T0), Allowed)
    assert isinstance(g.check(off("north.pump"), T0 + 10), Allowed)
    v = g.check(on("north.pump"), T0 + 50)
    assert isinstance(v, Blocked) and v.code is Code.MIN_OFF
    assert v.reason == "north.pump was switched off 40 s ago; min_off is 2m (80 s to go)"
    assert isinstance(g.check(on("north.pump"), T0 + 130), Allowed)


def test_min_off_does_not_apply_to_first_start_or_while_running() -> None:
    g = make(limits={"north.vent": ActuatorLimits("north.vent", min_off=120)})
    assert isinstance(g.check(Command("north.vent", 0.3), T0), Allowed)
    assert isinstance(g.check(Command("north.vent", 0.6), T0 + 1), Allowed)


def test_max_runtime_forces_off_at_the_limit() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", max_runtime=600)})
    v = g.check(on("north.pump"), T0)
    # the firmware gets max_runtime as its duration too: a board whose server dies stops
    assert isinstance(v, Allowed) and v.command.duration == 600
    assert g.next_due() == T0 + 600
    assert not g.tick(T0 + 599).sent
    out = g.tick(T0 + 600)
    assert [(a.command.actuator, a.command.value) for a in out.sent] == [("north.pump", 0.0)]
    assert out.events and out.events[0].data["code"] == "MAX_RUNTIME"
    assert "max_runtime is 10m" in out.events[0].message
    assert g.next_due() is None


def test_max_runtime_blocks_a_command_that_would_keep_it_on() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", max_runtime=600)})
    g.check(on("north.pump"), T0)
    v = g.check(on("north.pump"), T0 + 300)
    assert isinstance(v, Allowed) and v.command.duration == 300  # only what is left
    v = g.check(on("north.pump"), T0 + 600)  # tick not run yet
    assert isinstance(v, Blocked) and v.code is Code.MAX_RUNTIME
    assert "on for 10m" in v.reason and "max_runtime is 10m" in v.reason


def test_max_starts_per_hour() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", max_starts=(2, 3600))})
    for t in (0, 100):
        assert isinstance(g.check(on("north.pump"), T0 + t), Allowed)
        g.check(off("north.pump"), T0 + t + 10)
    v = g.check(on("north.pump"), T0 + 200)
    assert isinstance(v, Blocked) and v.code is Code.MAX_STARTS
    assert "2 times in the last 1h" in v.reason and "max_starts is 2/h" in v.reason
    assert "next start in 56m 40s" in v.reason
    # a running actuator is not started again
    assert isinstance(g.check(on("north.pump"), T0 + 3600), Allowed)
    assert isinstance(g.check(on("north.pump"), T0 + 3601), Allowed)


def test_rate_limit_counts_commands_not_renewals() -> None:
    g = make(limits={"north.vent": ActuatorLimits("north.vent", rate_limit=(2, 60))})
    assert isinstance(g.check(Command("north.vent", 0.3), T0), Allowed)
    assert isinstance(g.check(Command("north.vent", 0.4), T0 + 1), Allowed)
    v = g.check(Command("north.vent", 0.5), T0 + 2)
    assert isinstance(v, Blocked) and v.code is Code.RATE_LIMIT and "rate_limit is 2/m" in v.reason
    assert isinstance(g.check(off("north.vent"), T0 + 3), Allowed)
    assert isinstance(g.check(Command("north.vent", 0.5), T0 + 61), Allowed)


def test_never_together() -> None:
    lock = Interlock("heat-or-cool", never_together=("north.heater", "north.fan"))
    g = make(interlocks=(lock,))
    assert isinstance(g.check(on("north.heater"), T0), Allowed)
    v = g.check(on("north.fan"), T0)
    assert isinstance(v, Blocked) and v.code is Code.INTERLOCK
    assert "heat-or-cool" in v.reason and "north.heater is on" in v.reason
    # break before make in one instant: off first, then the other on
    g.check(off("north.heater"), T0 + 1)
    assert isinstance(g.check(on("north.fan"), T0 + 1), Allowed)


def test_never_together_counts_a_reported_state() -> None:
    lock = Interlock("heat-or-cool", never_together=("north.heater", "north.fan"))
    g = make(interlocks=(lock,))
    g.actuator_reported("north.heater", 1.0, T0)  # switched on at the board
    assert blocked_code(g.check(on("north.fan"), T0 + 1)) is Code.INTERLOCK


def test_only_if_needs_a_fresh_good_reading_that_holds() -> None:
    lock = Interlock("pump-needs-water", actuator="north.pump",
                     only_if=Comparison("tank.level", "above", 10.0))
    g = make(interlocks=(lock,))
    v = g.check(on("north.pump"), T0)
    assert isinstance(v, Blocked) and v.code is Code.INTERLOCK and "has not reported" in v.reason
    g.reading(Reading("tank.level", 4.0, T0))
    v = g.check(on("north.pump"), T0 + 1)
    assert isinstance(v, Blocked) and "tank.level is 4, needs above 10" in v.reason
    g.reading(Reading("tank.level", 40.0, T0 + 2, quality="bad"))
    assert blocked_code(g.check(on("north.pump"), T0 + 2)) is Code.INTERLOCK
    g.reading(Reading("tank.level", 40.0, T0 + 3))
    assert isinstance(g.check(on("north.pump", duration=1800), T0 + 3), Allowed)
    # stale once older than defaults.stale_after (5m): a running pump is switched off by tick
    assert g.next_due() == T0 + 303 + TICK
    assert not g.tick(T0 + 303).sent  # exactly 5m old is still fresh
    out = g.tick(T0 + 303 + TICK)
    assert [a.command.value for a in out.sent] == [0.0]
    assert out.events[0].data["code"] == "INTERLOCK"
    assert blocked_code(g.check(on("north.pump"), T0 + 304)) is Code.INTERLOCK


def test_only_if_failing_while_running_switches_off() -> None:
    lock = Interlock("pump-needs-water", actuator="north.pump",
                     only_if=Comparison("tank.level", "above", 10.0))
    g = make(interlocks=(lock,))
    g.reading(Reading("tank.level", 40.0, T0))
    assert isinstance(g.check(on("north.pump", duration=600), T0), Allowed)
    g.reading(Reading("tank.level", 5.0, T0 + 20))
    assert g.next_due() == T0 + 20
    out = g.tick(T0 + 20)
    assert [a.command.value for a in out.sent] == [0.0]
    assert "tank.level is 5" in out.events[0].message


def _loss_guard(policy: str) -> Guard:
    rule = Rule("water", "level", Comparison("north.soil", "below", 30.0),
                (SetActuator("north.pump", 1.0),))
    alarm = Rule("silence", "edge", NoData("north.air_temp", 60.0), (SetActuator("north.fan", 1.0),))
    return make(limits={"north.pump": ActuatorLimits("north.pump", on_sensor_loss=policy)},  # type: ignore[arg-type]
                rules=(rule, alarm))


def test_sensor_loss_off_switches_off_and_blocks_rules_until_fresh() -> None:
    g = _loss_guard("off")
    assert g.limits.entries["north.pump"].watched == ("north.soil",)
    g.reading(Reading("north.soil", 20.0, T0))
    assert isinstance(g.check(on("north.pump", hold=True), T0), Allowed)
    # renewals at half the lease keep it on; the reading is still fresh at exactly 300 s
    while (t := g.next_due()) is not None and t <= T0 + 300:
        assert all(a.command.value == 1.0 for a in g.tick(t).sent)
    assert g.next_due() == T0 + 300 + TICK
    out = g.tick(T0 + 300 + TICK)
    assert [a.command.value for a in out.sent] == [0.0]
    assert out.events[0].data["code"] == "SENSOR_LOST"
    v = g.check(on("north.pump"), T0 + 310)
    assert isinstance(v, Blocked) and v.code is Code.SENSOR_LOST and "north.soil" in v.reason
    # people too: a manual ON would be switched off again at once
    assert blocked_code(g.check(on("north.pump", source="manual"), T0 + 311)) is Code.SENSOR_LOST
    g.reading(Reading("north.soil", 20.0, T0 + 320))
    assert isinstance(g.check(on("north.pump"), T0 + 321), Allowed)


def test_a_stream_of_readings_moves_the_sensor_loss_off_and_a_bad_one_brings_it_forward() -> None:
    """Fresh readings only push the loss deadline later (the guard then keeps its
    earlier wake-up and looks again when it comes, without switching anything); the
    OFF still comes exactly ``stale_after`` after the last good reading, and a bad
    reading makes it due at once."""
    g = _loss_guard("off")
    g.reading(Reading("north.soil", 20.0, T0))
    assert isinstance(g.check(on("north.pump"), T0), Allowed)  # not a hold: no renewals
    for k in range(1, 61):  # a reading every 10 s for 10 minutes
        g.reading(Reading("north.soil", 20.0, T0 + 10 * k))
        while (t := g.next_due()) is not None and t <= T0 + 10 * k:
            assert g.tick(t).sent == []  # woken early: nothing switched
    last = T0 + 600
    while (t := g.next_due()) is not None and t < last + 300 + TICK:
        assert g.tick(t).sent == []
    assert g.next_due() == last + 300 + TICK
    out = g.tick(last + 300 + TICK)
    assert [a.command.value for a in out.sent] == [0.0] and out.events[0].data["code"] == "SENSOR_LOST"
    g2 = _loss_guard("off")
    g2.reading(Reading("north.soil", 20.0, T0))
    assert isinstance(g2.check(on("north.pump"), T0), Allowed)
    g2.reading(Reading("north.soil", 20.0, T0 + 10, "bad"))
    assert g2.next_due() == T0 + 10  # due at once, not 300 s on
    assert [a.command.value for a in g2.tick(T0 + 10).sent] == [0.0]


def test_sensor_loss_hold_keeps_state_and_blocks_changes() -> None:
    g = _loss_guard("hold")
    g.reading(Reading("north.soil", 20.0, T0))
    assert isinstance(g.check(on("north.pump", hold=True), T0), Allowed)
    out = g.tick(T0 + 300)
    assert all(a.command.value == 1.0 for a in out.sent)  # nothing switched off
    assert isinstance(g.check(on("north.pump", hold=True), T0 + 301), Allowed)  # same value
    v = g.check(Command("north.pump", 0.5), T0 + 302)
    assert isinstance(v, Blocked) and v.code is Code.SENSOR_LOST and "on_sensor_loss: hold" in v.reason
    assert isinstance(g.check(off("north.pump"), T0 + 303), Allowed)  # OFF is always allowed
    assert blocked_code(g.check(on("north.pump"), T0 + 304)) is Code.SENSOR_LOST


def test_sensor_loss_on_allows_on() -> None:
    g = _loss_guard("on")
    g.reading(Reading("north.soil", 20.0, T0))
    g.check(on("north.pump"), T0)
    assert not g.tick(T0 + 400).sent
    assert isinstance(g.check(on("north.pump"), T0 + 400), Allowed)


def test_no_data_for_sensors_are_not_watched() -> None:
    g = _loss_guard("off")
    assert g.limits.entries["north.fan"].watched == ()
    assert isinstance(g.check(on("north.fan"), T0 + 4000), Allowed)


# --------------------------------------------------------------------------
# OFF, toggle, order


def test_off_is_always_allowed() -> None:
    lock = Interlock("x", never_together=("north.heater", "north.fan"))
    g = Guard(deployment(limits={"north.fan": ActuatorLimits("north.fan", min_off=600, rate_limit=(1, 60))},
                         interlocks=(lock,)), start=T0)
    g.emergency_stop("all", "test", "me", T0)
    for ref in ("north.fan", "north.heater", "north.bad", "tank.valve"):
        assert isinstance(g.check(off(ref), T0 + 1), Allowed)


def test_emergency_is_checked_first() -> None:
    g = make()
    g.emergency_stop("north", "leak", "alice", T0)
    assert blocked_code(g.check(on("north.nothing"), T0)) is Code.EMERGENCY_STOP_ACTIVE
    assert blocked_code(g.check(Command("north.vent", 2.0), T0)) is Code.EMERGENCY_STOP_ACTIVE
    assert blocked_code(g.check(off("north.nothing"), T0)) is Code.ACTUATOR_NOT_CONFIGURED


def test_toggle_resolves_against_commanded_state() -> None:
    g = make()
    v = g.check(Command("north.fan", 0.0, toggle=True), T0)
    assert isinstance(v, Allowed) and v.command.value == 1.0 and not v.command.toggle
    v = g.check(Command("north.fan", 0.0, toggle=True), T0 + 1)
    assert isinstance(v, Allowed) and v.command.value == 0.0
    g.emergency_stop("all", "x", "me", T0 + 2)
    assert blocked_code(g.check(Command("north.fan", 0.0, toggle=True), T0 + 3)) is Code.EMERGENCY_STOP_ACTIVE
    g.actuator_reported("north.fan", 1.0, T0 + 4)
    # the board says it is on: the toggle means OFF, which is always allowed
    v = g.check(Command("north.fan", 0.0, toggle=True), T0 + 5)
    assert isinstance(v, Allowed) and v.command.value == 0.0
    assert g.commanded("north.fan") == 0.0
    assert g.commanded("north.heater") == 0.0  # the emergency stop sent OFF
    assert make().commanded("north.heater") is None


# --------------------------------------------------------------------------
# leases


def test_for_lease_ends_with_a_server_off() -> None:
    g = make()
    v = g.check(on("north.fan", duration=600, rule="cool"), T0)
    assert isinstance(v, Allowed) and v.command.duration == 600
    assert g.next_due() == T0 + 600
    out = g.tick(T0 + 600)
    assert [(a.command.value, a.command.rule) for a in out.sent] == [(0.0, "cool")]
    assert g.next_due() is None


def test_hold_is_renewed_at_half_the_lease() -> None:
    g = make(defaults=SafetyDefaults(lease=60))
    v = g.check(on("north.fan", hold=True, rule="cool"), T0)
    assert isinstance(v, Allowed) and v.command.duration == 60
    assert g.next_due() == T0 + 30
    out = g.tick(T0 + 30)
    assert [(a.command.value, a.command.duration, a.command.hold, a.command.rule) for a in out.sent] == [
        (1.0, 60, True, "cool")
    ]
    assert g.next_due() == T0 + 60
    g.check(off("north.fan"), T0 + 40)  # an OFF ends the hold
    assert g.next_due() is None


def test_later_command_replaces_the_lease() -> None:
    g = make()
    g.check(on("north.fan", duration=600), T0)
    g.check(on("north.fan", duration=60), T0 + 10)
    assert g.next_due() == T0 + 70
    g.check(on("north.fan"), T0 + 20)  # no duration: no lease
    assert g.next_due() is None


def test_blocked_renewal_switches_off() -> None:
    lock = Interlock("pump-needs-water", actuator="north.pump",
                     only_if=Comparison("tank.level", "above", 10.0))
    g = make(interlocks=(lock,), defaults=SafetyDefaults(stale_after=3600))
    g.reading(Reading("tank.level", 40.0, T0))
    g.check(on("north.pump", hold=True), T0)
    g.emergency_stop("tank", "unrelated board", "me", T0 + 1)
    g.check(on("north.pump", hold=True), T0 + 2)
    g.check(Command("north.heater", 1.0), T0 + 3)
    lock2 = Interlock("never", never_together=("north.pump", "north.heater"))
    g.reload(deployment(interlocks=(lock, lock2), defaults=SafetyDefaults(stale_after=3600)))
    out = g.tick(T0 + 32)
    assert [b.code for b in out.blocked] == [Code.INTERLOCK]
    assert [(a.command.actuator, a.command.value) for a in out.sent] == [("north.pump", 0.0)]


def test_renewal_waits_for_an_offline_device() -> None:
    g = make()
    g.check(on("north.fan", hold=True), T0)
    g.device_online("north", False, T0 + 5)
    out = g.tick(T0 + 30)
    assert [b.code for b in out.blocked] == [Code.DEVICE_OFFLINE] and not out.sent
    assert "not renewed" in out.events[0].message
    assert g.next_due() is None
    g.device_online("north", True, T0 + 100)
    assert g.next_due() == T0 + 100
    assert [a.command.value for a in g.tick(T0 + 100).sent] == [1.0]


def test_next_due_never_goes_backwards() -> None:
    lock = Interlock("w", actuator="north.pump", only_if=Comparison("tank.level", "above", 10.0))
    g = make(interlocks=(lock,))
    g.reading(Reading("tank.level", 40.0, T0))
    g.check(on("north.pump"), T0)
    g.reading(Reading("tank.level", 4.0, T0 + 1))  # measured earlier than the guard's now
    g.tick(T0 + 5)
    g.reading(Reading("tank.level", 40.0, T0 + 5))
    g.check(on("north.pump"), T0 + 6)
    g.reading(Reading("tank.level", 4.0, T0 + 2))  # older than the newest: ignored
    g.reading(Reading("tank.level", 4.0, T0 + 7, quality="bad"))
    due = g.next_due()
    assert due is not None and due >= T0 + 6


# --------------------------------------------------------------------------
# emergency stop


def test_emergency_stop_latches_publishes_and_switches_everything_off() -> None:
    g = make()
    g.check(on("north.fan", hold=True), T0)
    out = g.emergency_stop("north", "water on the floor", "alice", T0 + 1)
    assert [(e.target, e.active, e.who) for e in out.emergencies] == [("north", True, "alice")]
    assert {a.command.actuator for a in out.sent} == {
        "north.pump", "north.fan", "north.heater", "north.vent", "north.bad"}
    assert all(a.command.value == 0.0 for a in out.sent)
    assert out.events[0].severity == "critical" and "water on the floor" in out.events[0].message
    assert g.emergency_active("north") and g.emergency_active("ESP_N") and not g.emergency_active("tank")
    assert g.next_due() is None  # the hold ended
    v = g.check(on("north.fan"), T0 + 100)
    assert isinstance(v, Blocked) and v.code is Code.EMERGENCY_STOP_ACTIVE and "alice" in v.reason
    assert isinstance(g.check(on("tank.valve"), T0 + 100), Allowed)


def test_emergency_stop_for_all_boards() -> None:
    g = make()
    out = g.emergency_stop("all", "fire", "rule:smoke", T0)
    assert len(out.sent) == 6 and out.emergencies[0].target == "all"
    assert blocked_code(g.check(on("tank.valve"), T0 + 1)) is Code.EMERGENCY_STOP_ACTIVE


def test_emergency_stop_for_unknown_device_is_refused_not_raised() -> None:
    g = make()
    out = g.emergency_stop("nrth", "x", "me", T0)
    assert not out.emergencies and "unknown device" in out.events[0].message
    assert not g.emergency_active("north")


def test_reset_turns_nothing_on_and_records_who_and_why() -> None:
    g = make()
    g.check(on("north.fan", hold=True), T0)
    g.emergency_stop("all", "fire", "alice", T0 + 1)
    out = g.reset("all", "bob", "false alarm", T0 + 50)
    assert not out.sent and not out.blocked
    assert [(e.active, e.who, e.reason) for e in out.emergencies] == [(False, "bob", "false alarm")]
    assert "bob" in out.events[0].message and "false alarm" in out.events[0].message
    assert not g.tick(T0 + 100).sent
    assert g.commanded("north.fan") == 0.0
    assert isinstance(g.check(on("north.fan"), T0 + 101), Allowed)


def test_device_reset_under_a_stop_for_all_keeps_it_stopped() -> None:
    g = make()
    g.emergency_stop("all", "fire", "alice", T0)
    g.emergency_stop("north", "leak", "alice", T0)
    out = g.reset("north", "bob", "dry", T0 + 1)
    assert "still active" in out.events[0].message
    assert g.emergency_active("north")
    assert not g.reset("north", "bob", "again", T0 + 2).emergencies


def test_emergency_latch_survives_a_restart() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", max_starts=(1, 3600))})
    g.check(on("north.pump"), T0)
    g.check(on("north.fan", hold=True, rule="cool"), T0)
    g.emergency_stop("tank", "leak", "alice", T0 + 1)
    g.check(off("north.pump"), T0 + 2)
    data = json.loads(json.dumps(g.snapshot()))
    fresh = Guard(deployment(limits={"north.pump": ActuatorLimits("north.pump", max_starts=(1, 3600))}),
                  assume_online=True)
    fresh.restore(data)
    assert fresh.emergency_active("tank")
    assert blocked_code(fresh.check(on("tank.valve"), T0 + 10)) is Code.EMERGENCY_STOP_ACTIVE
    assert blocked_code(fresh.check(on("north.pump"), T0 + 10)) is Code.MAX_STARTS
    assert fresh.next_due() == T0 + 30  # the hold is still renewed
    assert [a.command.rule for a in fresh.tick(T0 + 30).sent] == ["cool"]


def test_restore_of_unreadable_latches_fails_safe() -> None:
    g = make()
    g.restore({"latches": ["garbage"], "actuators": {"north.fan": {"value": "x"}}, "readings": {"a": 3}})
    assert g.emergency_active("north")
    assert any(e.kind == "emergency" for e in g.tick(T0).events)
    g.restore("nonsense")  # type: ignore[arg-type]


def test_reload_keeps_state_of_remaining_actuators() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", min_off=120)})
    g.check(on("north.pump"), T0)
    g.check(off("north.pump"), T0 + 1)
    g.check(on("north.fan", duration=600), T0 + 1)
    g.emergency_stop("tank", "x", "me", T0 + 2)
    g.reload(deployment(limits={"north.pump": ActuatorLimits("north.pump", min_off=120)}))
    assert blocked_code(g.check(on("north.pump"), T0 + 10)) is Code.MIN_OFF
    assert g.emergency_active("tank")
    assert g.next_due() == T0 + 601


# --------------------------------------------------------------------------
# the pure function


def test_pure_guard_does_not_touch_its_input() -> None:
    from engine.safety import GuardState, compile_limits

    limits = compile_limits(deployment(limits={"north.pump": ActuatorLimits("north.pump", min_off=60)}))
    s0 = GuardState(assume_online=True)
    v1, s1 = guard(on("north.pump"), s0, limits, T0)
    assert isinstance(v1, Allowed) and s0.actuators == {} and s1.actuators["north.pump"].on_since == T0
    _v2, s2 = guard(off("north.pump"), s1, limits, T0 + 1)
    assert s1.actuators["north.pump"].value == 1.0
    v3, s3 = guard(on("north.pump"), s2, limits, T0 + 2)
    assert isinstance(v3, Blocked) and v3.code is Code.MIN_OFF and s3 is s2


@pytest.mark.parametrize("value", [-1.0, -0.0])
def test_negative_values_are_off(value: float) -> None:
    v = make().check(Command("north.fan", value, duration=5), T0)
    assert isinstance(v, Allowed) and v.command.value == 0.0 and v.command.duration is None


@pytest.mark.parametrize("value", ["on", None, [1]])
def test_unreadable_values_are_blocked_not_raised(value: object) -> None:
    g = make()
    v = g.check(Command("north.fan", value), T0)  # type: ignore[arg-type]
    assert isinstance(v, Blocked) and v.code is Code.PWM_OUT_OF_RANGE
    v = g.check(Command("north.nothing", value), T0)  # type: ignore[arg-type]
    assert isinstance(v, Blocked) and v.code is Code.ACTUATOR_NOT_CONFIGURED


def test_sensor_loss_hold_blocks_a_first_start() -> None:
    g = _loss_guard("hold")
    v = g.check(on("north.pump"), T0 + 301)  # north.soil silent since the start
    assert isinstance(v, Blocked) and v.code is Code.SENSOR_LOST and "has not reported since start" in v.reason


def test_a_board_that_switches_on_by_itself_is_still_limited() -> None:
    g = make(limits={"north.pump": ActuatorLimits("north.pump", max_runtime=60, min_off=30)})
    g.actuator_reported("north.pump", 1.0, T0)  # switched on at the board, not by us
    assert g.is_on("north.pump") and g.next_due() == T0 + 60
    out = g.tick(T0 + 60)
    assert [(a.command.actuator, a.command.value) for a in out.sent] == [("north.pump", 0.0)]
    g.actuator_reported("north.pump", 0.0, T0 + 61)
    assert blocked_code(g.check(on("north.pump"), T0 + 70)) is Code.MIN_OFF


def test_emergency_stop_by_esp_id() -> None:
    g = make()
    out = g.emergency_stop("ESP_T", "tank leak", "bob", T0)
    assert out.emergencies[0].target == "tank" and g.emergency_active("tank")
    assert [e.target for e in g.reset("ESP_T", "bob", "dry", T0 + 1).emergencies] == ["tank"]
    assert not g.emergency_active("tank")


# --------------------------------------------------------------------------
# issue 10: clamp, correction, freshness


def test_out_of_range_clamp_sends_the_nearest_bound_and_says_so() -> None:
    lim = {"north.vent": ActuatorLimits("north.vent", pwm=(0.1, 0.8), out_of_range="clamp")}
    g = make(limits=lim)  # type: ignore[arg-type]
    v = g.check(Command("north.vent", 0.95, reason="rule x"), T0)
    assert isinstance(v, Allowed) and v.command.value == 0.8
    assert v.command.reason == "rule x; clamped 0.95 to 0.8 (pwm range 0.1-0.8, out_of_range: clamp)"
    v = g.check(Command("north.vent", 0.05), T0 + 1)
    assert isinstance(v, Allowed) and v.command.value == 0.1
    assert isinstance(g.check(off("north.vent"), T0 + 2), Allowed)  # OFF is never clamped up
    assert g.commanded("north.vent") == 0.0
    # outside 0.0-1.0 is no duty at all: still blocked
    assert blocked_code(g.check(Command("north.vent", 1.5), T0 + 3)) is Code.PWM_OUT_OF_RANGE
    # the pure function clamps the same way
    v2, _ = guard(Command("north.vent", 1.0), g.state, g.limits, T0 + 4)
    assert isinstance(v2, Allowed) and v2.command.value == 0.8


def test_a_reported_partner_on_is_switched_off_by_the_guard() -> None:
    g = make(interlocks=(Interlock("heat-or-vent", never_together=("north.heater", "north.fan")),))
    assert isinstance(g.check(on("north.heater"), T0), Allowed)
    out = g.actuator_reported("north.fan", 1.0, T0 + 1)
    assert [(a.command.actuator, a.command.value, a.command.source) for a in out.sent] == [("north.fan", 0.0, "safety")]
    assert out.events[0].data["code"] == "INTERLOCK" and "north.heater is on" in out.events[0].message
    assert not g.is_on("north.fan") and g.is_on("north.heater")
    assert not g.actuator_reported("north.fan", 0.0, T0 + 2).sent
    assert not g.actuator_reported("north.heater", 1.0, T0 + 3).sent  # nothing else on: fine


def test_guard_and_engine_share_one_freshness_rule() -> None:
    from engine import freshness

    g = make(interlocks=(Interlock("needs", actuator="north.pump", only_if=Comparison("tank.level", "above", 10.0)),))
    g.reading(Reading("tank.level", 40.0, T0))
    assert isinstance(g.check(on("north.pump"), T0 + 300), Allowed)  # exactly stale_after old: fresh
    assert blocked_code(g.check(on("north.fan"), T0 + 300 + TICK)) is None
    assert blocked_code(g.check(on("north.pump"), T0 + 300 + TICK)) is Code.INTERLOCK
    assert freshness.value((40.0, T0, "good"), T0 + 300, 300.0) == 40.0
    assert freshness.value((40.0, T0, "good"), T0 + 300 + TICK, 300.0) is None
