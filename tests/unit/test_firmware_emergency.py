"""Twin: both emergency contracts, the latch and what clears it per generation.

current: main.cpp ESP-specific emergency and broadcast branches,
emergency_broadcast_contract.h validateBroadcastEmergencyContract,
classifyEmergencyContractMismatch, system commands set_emergency_token /
exit_safe_mode / safe_mode, SafetyController::clearEmergencyStop.
legacy: main.cpp setup() MQTT callback (routing order), ActuatorManager."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.firmware import new_board

T0 = 1_796_000_000.0
ESP = "ESP_12AB34"
ACK = b'{"status":"online","config_available":false,"server_time":1796000000,"handover_epoch":1}'
BROADCAST = "kaiser/broadcast/emergency"
CONFIG = {"correlation_id": "c1", "sensors": [{"gpio": 32, "sensor_type": "ph", "sensor_name": "ph"}],
          "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"},
                        {"gpio": 18, "actuator_type": "pump", "actuator_name": "pump"}]}
STOP = b'{"command":"stop_all","reason":"tank empty","issued_by":"kaiser","timestamp":"2026-11-30T17:00:00Z"}'


def topic(tail: str) -> str:
    return f"kaiser/god/esp/{ESP}/{tail}"


def enc(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def running(generation: str, **kw: Any):  # type: ignore[no-untyped-def]
    b = new_board(generation, ESP, now=T0, **kw)
    b.connect(T0)
    if generation == "current":
        b.receive(topic("system/heartbeat/ack"), ACK, T0)
    b.receive(topic("config"), enc(CONFIG), T0)
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 1)
    b.receive(topic("actuator/18/command"), b'{"command":"ON"}', T0 + 1)
    assert b.actuators[5].state and b.actuators[18].state and not b.latched
    return b


def stopped(b) -> bool:  # type: ignore[no-untyped-def]
    return b.latched and not any(a.state for a in b.actuators.values())


GENS = ["legacy", "current"]


# ------------------------------------------------------------------ broadcast


@pytest.mark.parametrize("gen", GENS)
def test_broadcast_with_string_fields_stops_and_latches(gen: str) -> None:
    b = running(gen)
    out = b.receive(BROADCAST, STOP, T0 + 2)
    assert stopped(b)
    alerts = [json.loads(o.payload) for o in out if o.topic.endswith("/alert")]
    assert len(alerts) == 2
    key = "alert_type" if gen == "current" else "type"
    assert all(a[key] == "emergency_stop" and a["message"] == "Actuator stopped" for a in alerts)


@pytest.mark.parametrize("field", ["reason", "issued_by", "timestamp", "action"])
def test_current_ignores_a_broadcast_with_a_non_string_field(field: str) -> None:
    b = running("current")
    doc = {"command": "stop_all", "reason": "r", "issued_by": "kaiser", "timestamp": "2026-11-30T17:00:00Z"}
    doc[field] = 1796000000
    b.receive(BROADCAST, enc(doc), T0 + 2)
    assert not b.latched and b.actuators[5].state
    assert b.refusals[-1] == ("emergency", f"non-string field {field}")


def test_legacy_stops_on_any_json_that_parses() -> None:
    for payload in (b'{"action":"stop_all","timestamp":1796000000}', b"[]", b"1", b'"x"'):
        b = running("legacy")
        b.receive(BROADCAST, payload, T0 + 2)
        assert stopped(b), payload


def test_legacy_broadcast_must_fit_a_256_byte_document() -> None:
    b = running("legacy")
    b.receive(BROADCAST, enc({"command": "stop_all", "reason": "r" * 300}), T0 + 2)
    assert not b.latched and "NoMemory" in b.refusals[-1][1]


@pytest.mark.parametrize(("payload", "stops"), [
    (b'{"action":"stop_all"}', True),                              # older alias
    (b'{"command":"emergency_stop"}', True),
    (b'{"command":"stop_all","action":"stop_all"}', True),
    (b'{"command":"stop_all","action":"emergency_stop"}', True),   # conflicting: fail-safe stop
    (b'{"command":5}', True),                                      # FIELD_TYPE_COMMAND: fail-safe stop
    (b'{"command":"stop_all","auth_token":5}', True),              # FIELD_TYPE_AUTH_TOKEN: fail-safe stop
    (b'{"command":"halt"}', False),                                # UNKNOWN_COMMAND_VALUE
    (b'{"reason":"x"}', False),                                    # MISSING_COMMAND_FIELD
    (b'{"command":""}', False),
    (b'{"command":"stop_all","timestamp":null}', False),           # present, not a string
    (b"not json", False),
])
def test_current_broadcast_contract(payload: bytes, stops: bool) -> None:
    b = running("current")
    b.receive(BROADCAST, payload, T0 + 2)
    assert stopped(b) is stops


@given(st.dictionaries(st.sampled_from(["command", "action", "reason", "issued_by", "timestamp"]),
                       st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                                 st.lists(st.integers(), max_size=1)), min_size=1))
def test_current_never_obeys_a_broadcast_whose_reason_issued_by_or_timestamp_is_not_a_string(
        doc: dict[str, Any]) -> None:
    doc = {"command": "stop_all", **{k: v for k, v in doc.items() if k in ("reason", "issued_by", "timestamp")}}
    if len(doc) == 1:
        doc["reason"] = 0
    b = running("current")
    b.receive(BROADCAST, enc(doc), T0 + 2)
    assert not b.latched


def test_current_broadcast_token() -> None:
    b = running("current", broadcast_token="bt")
    b.receive(BROADCAST, STOP, T0 + 2)
    assert not b.latched and b.refusals[-1][1].startswith("UNAUTHORIZED")
    b.receive(BROADCAST, enc({"command": "stop_all", "auth_token": "bt"}), T0 + 3)
    assert stopped(b)


def test_current_production_build_refuses_every_emergency_without_a_token() -> None:
    b = running("current", production=True)
    b.receive(BROADCAST, STOP, T0 + 2)
    b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop"}', T0 + 2)
    assert not b.latched
    assert [r[1].split(":")[0] for r in b.refusals[-2:]] == ["NO_TOKEN_CONFIGURED"] * 2


# ------------------------------------------------------------------ per board


def test_current_per_board_stop_reads_only_command() -> None:
    b = running("current")
    b.receive(topic("actuator/emergency"), b'{"action":"stop_all","reason":"x"}', T0 + 2)
    assert not b.latched
    out = b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop","reason":"x"}', T0 + 3)
    assert stopped(b)
    kinds = [o.topic.split("/actuator/")[1] for o in out]
    assert kinds == ["5/alert", "5/status", "18/alert", "18/status", "emergency/ack"]


def test_current_per_board_token_checked_only_when_set() -> None:
    b = running("current", emergency_token="secret")
    out = b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop","auth_token":"nope"}', T0 + 2)
    assert not b.latched
    assert [o.topic for o in out] == [topic("actuator/emergency/error")]
    b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop","auth_token":"secret"}', T0 + 3)
    assert stopped(b)


def test_set_emergency_token_system_command() -> None:
    b = running("current")
    out = b.receive(topic("system/command"), b'{"command":"set_emergency_token","token_type":"esp","token":"t1"}',
                    T0 + 2)
    resp = json.loads(out[0].payload)
    assert out[0].topic == topic("system/command/response") and resp["success"] is True
    b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop"}', T0 + 3)
    assert not b.latched  # "null" != "t1"
    b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop","auth_token":"t1"}', T0 + 4)
    assert b.latched
    b.reboot(T0 + 10)
    assert b.nvs["emergency_auth"] == "t1"  # kept in NVS


def test_legacy_never_sees_the_per_board_emergency() -> None:
    """The callback tests the actuator command prefix ``.../actuator/`` before the
    emergency topic; extractGPIOFromTopic finds no gpio in ``actuator/emergency``."""
    b = running("legacy")
    assert (topic("actuator/emergency"), 0) in b.subscriptions()
    out = b.receive(topic("actuator/emergency"), enc({"command": "emergency_stop", "auth_token": ESP}), T0 + 2)
    assert out == [] and not b.latched
    assert "routed to the command handler" in b.refusals[-1][1]


# ------------------------------------------------------------------- clearing


def test_current_clear_emergency_clears_and_switches_nothing_on() -> None:
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    out = b.receive(topic("actuator/emergency"), b'{"command":"clear_emergency"}', T0 + 10)
    assert not b.latched and not any(a.state for a in b.actuators.values())
    assert [o.topic for o in out] == [topic("actuator/emergency/response"), topic("actuator/recovery_confirm")]
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 11)
    assert b.actuators[5].state


def test_current_clear_within_5_s_of_the_stop_fails() -> None:
    """SafetyController::verifySystemSafety: verification_timeout_ms 5000."""
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    out = b.receive(topic("actuator/emergency"), b'{"command":"clear_emergency"}', T0 + 4)
    assert b.latched
    assert [o.topic for o in out] == [topic("actuator/255/alert"), topic("actuator/emergency/error")]


def test_current_clear_is_admitted_before_registration() -> None:
    """The emergency branch has no admission; the error/response topics pass the gate."""
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    b.reboot(T0 + 3)
    assert not b.latched  # a reboot clears the latch
    b.receive(topic("actuator/emergency"), b'{"command":"emergency_stop"}', T0 + 4)
    assert b.latched and not b.registered
    out = b.receive(topic("actuator/emergency"), b'{"command":"clear_emergency"}', T0 + 10)
    assert not b.latched and topic("actuator/emergency/response") in [o.topic for o in out]


def test_current_exit_safe_mode_clears_the_latch() -> None:
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    b.receive(topic("system/command"), b'{"command":"exit_safe_mode"}', T0 + 10)
    assert not b.latched


def test_current_exit_safe_mode_too_early_answers_success_but_keeps_the_latch() -> None:
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    out = b.receive(topic("system/command"), b'{"command":"exit_safe_mode"}', T0 + 3)
    assert json.loads(out[-1].payload)["success"] is True and b.latched


def test_current_unchanged_config_push_does_not_clear_the_latch() -> None:
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    b.receive(topic("config"), enc({**CONFIG, "correlation_id": "c2"}), T0 + 10)
    assert b.latched


def test_current_type_change_recreates_that_actuator_without_latch() -> None:
    b = running("current")
    b.receive(BROADCAST, STOP, T0 + 2)
    changed = {**CONFIG, "correlation_id": "c2",
               "actuators": [{"gpio": 5, "actuator_type": "pump", "actuator_name": "fan"}]}
    b.receive(topic("config"), enc(changed), T0 + 10)
    assert not b.actuators[5].emergency_stopped and b.actuators[18].emergency_stopped


def test_legacy_config_push_clears_the_latch_of_every_actuator_it_names() -> None:
    b = running("legacy")
    b.receive(BROADCAST, STOP, T0 + 2)
    b.receive(topic("config"), enc(CONFIG), T0 + 3)
    assert not b.latched and not any(a.state for a in b.actuators.values())


@pytest.mark.parametrize("gen", GENS)
def test_reboot_clears_the_latch(gen: str) -> None:
    b = running(gen)
    b.receive(BROADCAST, STOP, T0 + 2)
    b.reboot(T0 + 3)
    assert not b.latched


def test_current_safe_mode_system_command_stops() -> None:
    b = running("current")
    b.receive(topic("system/command"), b'{"command":"safe_mode"}', T0 + 2)
    assert stopped(b)


def test_emergency_before_registration_latches_but_publishes_no_alert() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("system/heartbeat/ack"), ACK, T0)
    b.receive(topic("config"), enc(CONFIG), T0)
    b.reboot(T0 + 1)
    out = b.receive(BROADCAST, STOP, T0 + 2)
    assert b.latched and out == []


def test_emergency_resets_the_handover_epoch() -> None:
    """SafetyController::emergencyStopAll -> OfflineModeManager::onEmergencyStop."""
    b = running("current")
    b.disconnect(T0 + 2)
    b.tick(T0 + 40)
    b.connect(T0 + 41)
    assert b.epoch == 1
    b.receive(BROADCAST, STOP, T0 + 42)
    assert b.epoch == 0 and b.mode == "ONLINE"  # type: ignore[attr-defined]


def test_current_system_commands_answer_on_system_command_response() -> None:
    b = running("current")
    out = b.receive(topic("system/command"), b'{"command":"set_log_level","level":"debug"}', T0 + 2)
    assert json.loads(out[-1].payload)["success"] is True
    out = b.receive(topic("system/command"), b'{"command":"reboot_now"}', T0 + 3)
    assert json.loads(out[-1].payload) == {"command": "reboot_now", "esp_id": ESP, "success": False,
                                           "error": "Unknown command", "ts": int(T0) + 3,
                                           "seq": json.loads(out[-1].payload)["seq"]}
    b.receive(topic("system/command"), b'{"command":"factory_reset","confirm":true}', T0 + 4)
    assert not b.connected and b.connect(T0 + 5) == []


def test_system_commands_before_registration_are_refused() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    out = b.receive(topic("system/command"), b'{"command":"exit_safe_mode"}', T0 + 1)
    body = json.loads(out[-1].payload)
    assert body["success"] is False and body["reason_code"] == "REGISTRATION_PENDING"
