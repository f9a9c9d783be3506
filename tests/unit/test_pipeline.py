"""Kaiser: engine -> arbitration -> the real safety guard, with nothing skipping the guard."""

from __future__ import annotations

import json

from engine.model import (
    Actuator,
    ActuatorLimits,
    Code,
    Command,
    Comparison,
    Deployment,
    Device,
    DeviceIs,
    EmergencyStop,
    Notify,
    Reading,
    Rule,
    Safety,
    SafetyDefaults,
    Sensor,
    SetActuator,
)
from engine.pipeline import Kaiser

T0 = 1_780_000_000.0


def dep(*rules: Rule, **limits: ActuatorLimits) -> Deployment:
    devices = {
        "north": Device("north", "ESP_N", sensors=(Sensor("north", "temp", 4, "ds18b20"),),
                        actuators=(Actuator("north", "fan", 12, "relay"), Actuator("north", "vent", 13, "pwm"))),
        "tank": Device("tank", "ESP_T", actuators=(Actuator("tank", "pump", 16, "pump"),)),
    }
    return Deployment(devices=devices, rules=tuple(rules),
                      safety=Safety(SafetyDefaults(offline_after=90.0),
                                    {v.actuator: v for v in limits.values()}))


HOT = Rule("hot", "edge", Comparison("north.temp", "above", 28.0), (SetActuator("north.fan", 1.0, 600.0),))


def test_a_rule_command_passes_the_guard_and_is_sent() -> None:
    k = Kaiser(dep(HOT), assume_online=True)
    out = k.receive(Reading("north.temp", 30.0, T0), T0)
    assert [(a.command.actuator, a.command.value, a.command.duration) for a in out.sent] == [("north.fan", 1.0, 600.0)]
    assert out.runs[0].rule == "hot"


def test_commands_to_an_offline_device_are_blocked_with_an_event() -> None:
    k = Kaiser(dep(Rule("pump", "edge", Comparison("north.temp", "above", 28.0),
                        (SetActuator("tank.pump", 1.0, 60.0),))))
    out = k.receive(Reading("north.temp", 30.0, T0), T0)  # tank never seen
    assert not out.sent
    assert [b.code for b in out.blocked] == [Code.DEVICE_OFFLINE]
    assert any(e.kind == "safety" for e in out.events)


def test_devices_go_offline_after_silence_and_rules_see_it() -> None:
    k = Kaiser(dep(Rule("gone", "edge", DeviceIs("tank", False), (Notify("tank offline"),))))
    k.tick(T0)
    k.device_seen("ESP_T", T0 + 10)  # by esp_id
    assert k.next_due() == T0 + 90  # north: never seen since start
    out = k.tick(T0 + 100)
    assert [e.subject for e in out.events if e.kind == "device"] == ["north", "tank"]
    assert [n.text for n in out.notifications] == ["tank offline"]


def test_manual_commands_are_guarded_too() -> None:
    k = Kaiser(dep(vent=ActuatorLimits("north.vent", pwm=(0.1, 0.8))), assume_online=True)
    out = k.command(Command("north.vent", 0.95, source="manual"), T0)
    assert [b.code for b in out.blocked] == [Code.PWM_OUT_OF_RANGE]
    assert k.command(Command("north.vent", 0.5, source="manual"), T0 + 1).sent


def test_emergency_stop_from_a_rule_latches_and_blocks_later_commands() -> None:
    panic = Rule("panic", "edge", Comparison("north.temp", "above", 45.0), (EmergencyStop("all", "too hot"),),
                 priority=100)
    k = Kaiser(dep(panic, Rule("hot", "edge", Comparison("north.temp", "above", 28.0),
                               (SetActuator("north.fan", 1.0),), index=1)), assume_online=True)
    out = k.receive(Reading("north.temp", 50.0, T0), T0)
    assert [e.target for e in out.emergencies] == ["all"]
    assert all(a.command.is_off for a in out.sent)
    assert [b.code for b in out.blocked] == [Code.EMERGENCY_STOP_ACTIVE]
    k.reset("all", "tester", "cooled down", T0 + 5)
    k.receive(Reading("north.temp", 20.0, T0 + 6), T0 + 6)
    assert k.receive(Reading("north.temp", 30.0, T0 + 7), T0 + 7).sent


def test_for_end_off_comes_from_the_guard() -> None:
    k = Kaiser(dep(HOT), assume_online=True)
    k.receive(Reading("north.temp", 30.0, T0), T0)
    due = k.next_due()
    assert due is not None and due <= T0 + 600
    out = k.tick(T0 + 600)
    assert [(a.command.actuator, a.command.value) for a in out.sent] == [("north.fan", 0.0)]


def test_snapshot_is_json_and_restores() -> None:
    d = dep(Rule("hot", "edge", Comparison("north.temp", "above", 28.0, for_=120.0),
                 (SetActuator("north.fan", 1.0),)))
    a = Kaiser(d, assume_online=True)
    a.receive(Reading("north.temp", 30.0, T0), T0)
    snap = json.loads(json.dumps(a.snapshot()))
    b = Kaiser(d, assume_online=True)
    b.restore(snap)
    assert b.tick(T0 + 120).sent


def test_reload_keeps_running_state() -> None:
    k = Kaiser(dep(HOT), assume_online=True)
    k.receive(Reading("north.temp", 30.0, T0), T0)
    out = k.reload(dep(HOT, Rule("warm", "edge", Comparison("north.temp", "above", 25.0),
                                 (Notify("warm {north.temp}"),), index=1)), T0 + 5)
    assert [n.text for n in out.notifications] == ["warm 30"]
    assert any(e.kind == "reload" for e in out.events)
    assert not out.sent  # "hot" was already true: no new edge


def test_a_failing_rule_network_is_an_event_not_an_exception() -> None:
    from engine.errors import EngineError

    k = Kaiser(dep(HOT), assume_online=True)

    def broken(*_: object) -> None:
        raise EngineError("durable-rules failed")

    k.engine.receive = broken  # type: ignore[method-assign,assignment]
    out = k.receive(Reading("north.temp", 30.0, T0), T0)
    assert not out.sent
    assert [(e.kind, e.severity) for e in out.events] == [("engine", "critical")]
    assert k.tick(T0 + 1) is not None  # the pipeline keeps running


def test_a_retained_reading_does_not_bring_a_device_online() -> None:
    k = Kaiser(dep(HOT))
    out = k.receive(Reading("north.temp", 30.0, T0 - 600, retained=True), T0)
    assert not [e for e in out.events if e.kind == "device"] and not out.sent
    out = k.receive(Reading("north.temp", 30.5, T0 + 1), T0 + 1)
    assert [e.message for e in out.events if e.kind == "device"] == ["device north is online"]


def test_a_hold_refused_while_offline_is_sent_when_the_board_is_back() -> None:
    keep = Rule("keep-pumping", "level", Comparison("north.temp", "above", 28.0), (SetActuator("tank.pump", 1.0),))
    k = Kaiser(dep(keep))
    k.tick(T0)
    out = k.receive(Reading("north.temp", 30.0, T0 + 1), T0 + 1)  # tank never seen: offline
    assert [b.code for b in out.blocked] == [Code.DEVICE_OFFLINE]
    out = k.device_seen("tank", T0 + 2)
    assert [(a.command.actuator, a.command.value, a.command.hold) for a in out.sent] == [("tank.pump", 1.0, True)]
    assert not k.device_seen("tank", T0 + 3).sent  # once


def test_reloading_the_example_deployment_recompiles_only_what_changed() -> None:
    from dataclasses import replace
    from pathlib import Path

    from engine.config import load_deployment

    d, diags = load_deployment(Path(__file__).resolve().parents[2] / "rules", "Europe/Berlin")
    assert not [x for x in diags if x.is_error]
    k = Kaiser(d, assume_online=True)
    k.receive(Reading("north.air_temp", 12.0, T0), T0)  # heater-thermostat holds
    before = {p.key for p in k.engine.program.partitions}
    out = k.reload(d, T0 + 1)
    assert not out.sent and not out.blocked and [e.kind for e in out.events] == ["reload"]
    assert {p.key for p in k.engine.program.partitions} == before
    rules = tuple(replace(r, cooldown=0.0) if r.name == "frost-warning" else r for r in d.rules)
    edited = tuple(replace(r, condition=Comparison("north.air_temp", "below", 3.0)) if r.name == "frost-warning"
                   else r for r in rules)
    k.reload(replace(d, rules=edited), T0 + 2)
    after = {p.key for p in k.engine.program.partitions}
    assert 1 <= len(after - before) <= 2
    assert "heater-thermostat" in k.engine.holds()
