"""Twin: actuator commands (ActuatorManager::handleActuatorCommand and the text scanner
extractJSONString / extractJSONFloat / extractJSONUInt32, both generations)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.firmware import new_board, scanner

T0 = 1_796_000_000.0
ESP = "ESP_12AB34"
ACK = b'{"status":"online","config_available":false,"server_time":1796000000,"handover_epoch":1}'
CONFIG = {"correlation_id": "c1", "sensors": [{"gpio": 32, "sensor_type": "ph", "sensor_name": "ph"}],
          "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"},
                        {"gpio": 25, "actuator_type": "pwm", "actuator_name": "vent"},
                        {"gpio": 26, "actuator_type": "valve", "actuator_name": "mist", "aux_gpio": 14},
                        {"gpio": 18, "actuator_type": "pump", "actuator_name": "pump"}]}


def topic(tail: str) -> str:
    return f"kaiser/god/esp/{ESP}/{tail}"


def board(generation: str):  # type: ignore[no-untyped-def]
    b = new_board(generation, ESP, now=T0)
    b.connect(T0)
    if generation == "current":
        b.receive(topic("system/heartbeat/ack"), ACK, T0)
    b.receive(topic("config"), json.dumps(CONFIG).encode(), T0)
    assert set(b.actuators) == {5, 25, 26, 18}
    return b


def cmd(b, gpio: int, payload: bytes | str, t: float = 1.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    raw = payload.encode() if isinstance(payload, str) else payload
    out = b.receive(topic(f"actuator/{gpio}/command"), raw, T0 + t)
    return [{"kind": o.topic.rsplit("/", 1)[1], **json.loads(o.payload)} for o in out]


GENS = ["legacy", "current"]


# ------------------------------------------------------------- the scanner


def test_scanner_needs_the_literal_key_colon() -> None:
    assert scanner.extract_string('{"command":"ON"}', "command") == "ON"
    assert scanner.extract_string('{"command" : "ON"}', "command") == ""
    assert scanner.extract_string('{"command": "ON"}', "command") == "ON"  # spaces after the colon are skipped
    assert scanner.extract_string('{"value":0.5,"x":1}', "value") == "0.5"
    assert scanner.extract_string('{"value":"0.5"}', "value") == "0.5"
    assert scanner.extract_string('{"value":0.5}', "value") == "0.5"
    # the first occurrence anywhere wins, even inside a nested object
    assert scanner.extract_string('{"meta":{"command":"OFF"},"command":"ON"}', "command") == "OFF"


@given(st.sampled_from(["ON", "OFF", "TOGGLE"]), st.sampled_from([" :", "  :", "\t:", " : "]))
def test_non_compact_json_is_not_understood(verb: str, colon: str) -> None:
    """A space before the colon hides the key: the command is ''. Unknown command."""
    for gen in GENS:
        b = board(gen)
        before = b.actuators[5].state
        msgs = cmd(b, 5, f'{{"command"{colon}"{verb}","value"{colon}1.0}}')
        resp = [m for m in msgs if m["kind"] == "response"][-1]
        assert resp["success"] is False and resp["command"] == ""
        assert b.actuators[5].state == before


@pytest.mark.parametrize("gen", GENS)
def test_verbs_are_case_insensitive(gen: str) -> None:
    b = board(gen)
    cmd(b, 5, '{"command":"on"}')
    assert b.actuators[5].state
    cmd(b, 5, '{"command":"Toggle"}', 2)
    assert not b.actuators[5].state


@pytest.mark.parametrize("gen", GENS)
def test_unknown_verb_fails(gen: str) -> None:
    b = board(gen)
    resp = cmd(b, 5, '{"command":"STOP"}')[-1]
    assert resp["success"] is False
    if gen == "current":
        assert resp["message"] == "Unknown command: STOP"
    else:
        assert resp["message"] == "Command failed"


# ---------------------------------------------------------------- answers


def test_current_answer_is_a_status_then_a_response() -> None:
    b = board("current")
    msgs = cmd(b, 5, '{"command":"ON","value":1.0,"duration":0,"correlation_id":"k-1","issued_by":"kaiser"}')
    assert [m["kind"] for m in msgs] == ["status", "response"]
    status, resp = msgs
    assert (status["state"], status["pwm"], status["command_source"]) == (True, 255, "kaiser")
    assert {k: resp[k] for k in ("gpio", "command", "value", "duration", "success", "message",
                                 "correlation_id", "issued_by")} == {
        "gpio": 5, "command": "ON", "value": 1.0, "duration": 0, "success": True,
        "message": "Command executed", "correlation_id": "k-1", "issued_by": "kaiser"}


def test_current_binary_no_op_still_reports_a_status() -> None:
    b = board("current")
    cmd(b, 5, '{"command":"ON"}')
    msgs = cmd(b, 5, '{"command":"ON"}', 2)
    assert [m["kind"] for m in msgs] == ["response", "status"]


def test_legacy_answer_status_response_status_all_retained_qos_0() -> None:
    b = board("legacy")
    out = b.receive(topic("actuator/5/command"), b'{"command":"ON","value":1.0,"duration":30}', T0 + 1)
    assert [o.topic.rsplit("/", 1)[1] for o in out] == ["status", "response", "status"]
    assert all((o.qos, o.retain) == (0, True) for o in out)
    resp = json.loads(out[1].payload)
    assert resp == {"esp_id": ESP, "zone_id": "", "ts": 1000, "gpio": 5, "command": "ON", "value": 1.0,
                    "duration": 30, "success": True, "message": "Command executed"}
    assert b'"value":1.000' in out[1].payload


@pytest.mark.parametrize("gen", GENS)
def test_no_actuator_on_that_gpio(gen: str) -> None:
    b = board(gen)
    msgs = cmd(b, 19, '{"command":"ON"}')
    assert [m["kind"] for m in msgs] == ["response"] and msgs[0]["success"] is False
    if gen == "current":
        assert msgs[0]["message"] == "Actuator not configured on GPIO 19. Configure via API first."


# ------------------------------------------------------------------ PWM


@pytest.mark.parametrize("gen", GENS)
def test_pwm_value_becomes_a_duty(gen: str) -> None:
    b = board(gen)
    cmd(b, 25, '{"command":"PWM","value":0.6}')
    assert (b.actuators[25].pwm, b.actuators[25].state) == (153, True)
    cmd(b, 25, '{"command":"PWM","value":0.0}', 2)
    assert not b.actuators[25].state


@pytest.mark.parametrize("gen", GENS)
def test_pwm_out_of_range_is_clamped_on_a_pwm_actuator_and_refused_on_others(gen: str) -> None:
    """ActuatorManager::controlActuator: constrain() for type pwm, validateActuatorValue
    (0.0-1.0) for the others."""
    b = board(gen)
    resp = [m for m in cmd(b, 25, '{"command":"PWM","value":1.7}') if m["kind"] == "response"][-1]
    assert resp["success"] is True and b.actuators[25].pwm == 255
    resp = [m for m in cmd(b, 5, '{"command":"PWM","value":1.7}', 2) if m["kind"] == "response"][-1]
    assert resp["success"] is False and not b.actuators[5].state
    resp = [m for m in cmd(b, 5, '{"command":"PWM","value":0.7}', 3) if m["kind"] == "response"][-1]
    assert resp["success"] is True and b.actuators[5].state  # relay: on at >= 0.5


@pytest.mark.parametrize("gen", GENS)
def test_valve_positions_report_after_the_motor_ran(gen: str) -> None:
    """ValveActuator: positions at 0.33/0.66, 2.5 s per step; status shows the old
    position until loop() stops the movement."""
    b = board(gen)
    cmd(b, 26, '{"command":"PWM","value":0.5}')
    assert b.actuators[26].pwm == 0
    b.tick(T0 + 4)
    assert b.actuators[26].pwm == 127
    cmd(b, 26, '{"command":"ON"}', 5)
    b.tick(T0 + 8)
    # current firmware: controlActuatorBinary is a no-op when current_state is already
    # true, and a half-open valve is "on": ON does not open it fully
    assert b.actuators[26].pwm == (254 if gen == "legacy" else 127)


# ---------------------------------------------------------------- duration


def test_current_duration_switches_an_on_off_by_itself() -> None:
    b = board("current")
    cmd(b, 5, '{"command":"ON","value":1.0,"duration":30}')
    b.tick(T0 + 30.9)
    assert b.actuators[5].state
    out = b.tick(T0 + 31)
    assert not b.actuators[5].state
    assert json.loads(out[-1].payload)["command_source"] == "firmware:auto_duration"


@pytest.mark.parametrize("verb", ["PWM", "TOGGLE"])
def test_current_duration_is_ignored_for_pwm_and_toggle(verb: str) -> None:
    b = board("current")
    gpio = 25 if verb == "PWM" else 5
    cmd(b, gpio, f'{{"command":"{verb}","value":0.5,"duration":10}}')
    b.tick(T0 + 100)
    assert b.actuators[gpio].state


def test_current_duration_is_whole_seconds_and_a_new_command_cancels_it() -> None:
    b = board("current")
    cmd(b, 5, '{"command":"ON","duration":2.9}')
    b.tick(T0 + 3.5)
    assert not b.actuators[5].state  # 2.9 -> toInt() -> 2 s
    cmd(b, 5, '{"command":"ON","duration":10}', 4)
    cmd(b, 5, '{"command":"ON"}', 5)  # the timer is cleared by every command
    b.tick(T0 + 30)
    assert b.actuators[5].state


def test_legacy_ignores_duration() -> None:
    b = board("legacy")
    cmd(b, 5, '{"command":"ON","duration":5}')
    b.tick(T0 + 100)
    assert b.actuators[5].state


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("gen", GENS)
def test_latched_actuators_refuse_every_command_off_included(gen: str) -> None:
    b = board(gen)
    cmd(b, 5, '{"command":"ON"}')
    b.receive("kaiser/broadcast/emergency", b'{"command":"stop_all","reason":"test"}', T0 + 2)
    assert b.latched and not b.actuators[5].state
    for verb in ("ON", "OFF", "TOGGLE", "PWM"):
        resp = [m for m in cmd(b, 5, f'{{"command":"{verb}","value":0.5}}', 3) if m["kind"] == "response"][-1]
        assert resp["success"] is False
    assert not b.actuators[5].state
    if gen == "current":
        msgs = cmd(b, 5, '{"command":"OFF"}', 4)
        assert [m["kind"] for m in msgs] == ["alert", "status", "response"]
        assert msgs[0]["alert_type"] == "emergency_stop"


def test_pump_runtime_protection_allows_60_switch_ons_an_hour() -> None:
    """PumpActuator::canActivate: max_activations_per_hour = 60."""
    b = board("current")
    for i in range(60):
        cmd(b, 18, '{"command":"ON"}', 10 + 2 * i)
        cmd(b, 18, '{"command":"OFF"}', 11 + 2 * i)
    resp = [m for m in cmd(b, 18, '{"command":"ON"}', 200) if m["kind"] == "response"][-1]
    assert resp["success"] is False and resp["message"] == "Failed to turn actuator ON"
    resp = [m for m in cmd(b, 18, '{"command":"ON"}', 3700) if m["kind"] == "response"][-1]
    assert resp["success"] is True


@given(st.text(alphabet='{}":,. 0123456789ONFPWMTGLEonfpwmtgle-', max_size=40))
def test_any_text_gets_exactly_one_response_and_never_crashes(text: str) -> None:
    for gen in GENS:
        b = board(gen)
        msgs = cmd(b, 5, text)
        assert sum(m["kind"] == "response" for m in msgs) == 1


def test_press_switches_locally_and_reports() -> None:
    b = board("current")
    out = b.press(5, True, T0 + 1)
    assert b.actuators[5].state and [o.topic for o in out] == [topic("actuator/5/status")]
