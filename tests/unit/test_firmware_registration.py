"""Twin: registration gate, heartbeat ack contract, 120 s no-ack safe state.

Each test names the firmware function the rule comes from (current = 0a9b54ff,
legacy = a464a94b)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.firmware import new_board

T0 = 1_796_000_000.0
ESP = "ESP_12AB34"
K = "god"


def topic(tail: str) -> str:
    return f"kaiser/{K}/esp/{ESP}/{tail}"


def ack(epoch: object = 1, status: str = "online", **extra: object) -> bytes:
    body = {"status": status, "config_available": False, "server_time": int(T0), "handover_epoch": epoch}
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


CONFIG = {"correlation_id": "cfg-1",
          "sensors": [{"gpio": 32, "sensor_type": "ph", "sensor_name": "ph"}],
          "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"},
                        {"gpio": 18, "actuator_type": "pump", "actuator_name": "pump"}]}


def cfg_bytes(cfg: dict[str, object] = CONFIG) -> bytes:
    return json.dumps(cfg, separators=(",", ":")).encode()


def current(**kw: object):  # type: ignore[no-untyped-def]
    b = new_board("current", ESP, now=T0, **kw)  # type: ignore[arg-type]
    b.connect(T0)
    return b


def registered_with_config():  # type: ignore[no-untyped-def]
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(), T0 + 1)
    b.receive(topic("config"), cfg_bytes(), T0 + 2)
    assert b.registered and set(b.actuators) == {5, 18}
    return b


def heartbeats(out) -> list[float]:  # type: ignore[no-untyped-def]
    return [json.loads(o.payload)["ts"] for o in out if o.topic.endswith("/system/heartbeat")]


# -------------------------------------------------------------- heartbeats


def test_current_connect_publishes_session_announce_then_first_heartbeat() -> None:
    """mqtt_client.cpp MQTT_EVENT_CONNECTED: publishSessionAnnounce (kaiser/god, QoS 1),
    then the bootstrap heartbeat (QoS 0) after the ack subscription."""
    b = new_board("current", ESP, now=T0)
    out = b.connect(T0)
    assert [o.topic for o in out] == [f"kaiser/god/esp/{ESP}/session/announce", topic("system/heartbeat")]
    announce = json.loads(out[0].payload)
    assert announce["handover_epoch"] == 1 and announce["reason"] == "boot"
    hb = json.loads(out[1].payload)
    assert (out[1].qos, out[1].retain) == (0, False)
    for key in ("active_handover_epoch", "handover_completed_epoch", "boot_sequence_id", "reset_reason",
                "time_valid", "config_status"):
        assert key in hb
    assert hb["active_handover_epoch"] == 0 and hb["reset_reason"] == "POWERON"


def test_heartbeats_every_5_s_until_a_valid_ack_then_every_60_s() -> None:
    """MQTTClient::publishHeartbeat: HEARTBEAT_REGISTRATION_RETRY_MS until registration."""
    b = current()
    out = b.tick(T0 + 20)
    assert heartbeats(out) == [T0 + 5, T0 + 10, T0 + 15, T0 + 20]
    b.receive(topic("system/heartbeat/ack"), ack(), T0 + 21)
    out = b.tick(T0 + 200)
    assert heartbeats(out) == [T0 + 80, T0 + 140, T0 + 200]


def test_legacy_first_heartbeat_only_after_a_minute_of_uptime() -> None:
    """legacy MQTTClient::publishHeartbeat: millis() - last_heartbeat_ (0) < 60000 at boot,
    so the setup() heartbeat is silent; then every 60 s, QoS 0, not retained."""
    b = new_board("legacy", ESP, now=T0)
    assert b.connect(T0) == []
    out = b.tick(T0 + 130)
    hbs = [o for o in out if o.topic.endswith("/system/heartbeat")]
    assert [json.loads(o.payload)["uptime"] for o in hbs] == [60, 120]
    assert all((o.qos, o.retain) == (0, False) for o in hbs)
    assert "active_handover_epoch" not in json.loads(hbs[0].payload)


# ------------------------------------------------------------------ gate


def test_nothing_but_heartbeats_and_answers_before_registration() -> None:
    """MQTTClient::publish registration gate + SensorManager::publishSensorReading."""
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(), T0 + 1)
    b.receive(topic("config"), cfg_bytes(), T0 + 2)
    b.reboot(T0 + 10)  # back without registration; sensors and actuators from NVS
    assert not b.registered and set(b.actuators) == {5, 18}
    assert b.reading(32, T0 + 11, raw=2000, value=6.5) == []
    out = b.receive(topic("actuator/5/command"), b'{"command":"ON","value":1.0}', T0 + 12)
    assert [o.topic for o in out] == [topic("actuator/5/response")]  # no status
    body = json.loads(out[0].payload)
    assert body["success"] is False and "REGISTRATION_PENDING" in body["message"]
    assert ("command", "REGISTRATION_PENDING") in b.refusals
    assert not b.actuators[5].state
    out = b.tick(T0 + 60)
    assert {o.topic for o in out} == {topic("system/heartbeat")}


def test_config_refused_before_registration_without_answer() -> None:
    """routeIncomingMessage config branch: shouldAcceptCommand(CONFIG) -> REGISTRATION_PENDING;
    only an intent outcome (itself gated) is published."""
    b = current()
    assert b.receive(topic("config"), cfg_bytes(), T0 + 1) == []
    assert ("config", "REGISTRATION_PENDING") in b.refusals
    assert b.actuators == {}


def test_after_the_ack_data_flows() -> None:
    b = registered_with_config()
    out = b.reading(32, T0 + 3, raw=2150, value=6.19, quality="fair", unit="pH")
    assert len(out) == 1
    body = json.loads(out[0].payload)
    assert (body["raw"], body["value"], body["ts"], body["time_valid"]) == (2150, 6.19, T0 + 3, True)
    assert (out[0].qos, out[0].retain) == (1, False)


def test_reading_for_an_unconfigured_or_inactive_sensor_is_nothing() -> None:
    b = registered_with_config()
    assert b.reading(33, T0 + 3, raw=1) == []


# ---------------------------------------------------------- ack contract


@pytest.mark.parametrize(("payload", "code"), [
    (b'{"status":"online","handover_epoch":0}', "INVALID_HANDOVER_EPOCH"),
    (b'{"status":"online","handover_epoch":1.0}', "INVALID_HANDOVER_EPOCH_TYPE"),
    (b'{"status":"online","handover_epoch":"1"}', "INVALID_HANDOVER_EPOCH_TYPE"),
    (b'{"status":"online","handover_epoch":-1}', "INVALID_HANDOVER_EPOCH_TYPE"),
    (b'{"status":"online","handover_epoch":true}', "INVALID_HANDOVER_EPOCH_TYPE"),
    (b'{"status":"online","handover_epoch":4294967296}', "INVALID_HANDOVER_EPOCH_TYPE"),
    (b'{"status":"online"}', "MISSING_HANDOVER_EPOCH"),
    (b'{"handover_epoch":1}', "MISSING_ACK_STATUS"),
])
def test_ack_epoch_must_be_an_integer_of_1_or_more(payload: bytes, code: str) -> None:
    """main.cpp heartbeat ack branch: containsKey status/handover_epoch,
    is<uint32_t>(), != 0; every rejection is reported as handover_contract_last_reject."""
    b = current()
    assert b.receive(topic("system/heartbeat/ack"), payload, T0 + 1) == []
    assert not b.registered
    assert b.refusals[-1] == ("ack", code)
    assert b.last_reject == code  # type: ignore[attr-defined]


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5), st.booleans(),
                 st.integers(max_value=0), st.integers(min_value=2**32), st.none(),
                 st.lists(st.integers(), max_size=2)))
def test_any_epoch_that_is_not_a_positive_uint32_integer_is_refused(epoch: object) -> None:
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(epoch), T0 + 1)
    assert not b.registered


@given(st.integers(min_value=1, max_value=2**32 - 1))
def test_while_online_any_positive_epoch_opens_the_gate(epoch: int) -> None:
    """OfflineModeManager::validateServerAckContract: mode ONLINE accepts any epoch >= 1."""
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(epoch), T0 + 1)
    assert b.registered


def test_ack_that_does_not_fit_the_256_byte_document_is_a_parse_error() -> None:
    """DynamicJsonDocument doc(256): a long extra field makes deserializeJson fail (NoMemory)."""
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(correlation_id="x" * 200), T0 + 1)
    assert not b.registered and b.refusals[-1] == ("ack", "parse error NoMemory")


def test_compact_ack_with_extra_fields_is_accepted() -> None:
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(ack_type="heartbeat", contract_version=2), T0 + 1)
    assert b.registered


def test_pending_approval_admits_config_but_not_commands() -> None:
    """command_admission.cpp shouldAcceptCommand: PENDING_APPROVAL admits CONFIG and the
    system allowlist only."""
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(status="pending_approval"), T0 + 1)
    assert b.registered and b.system_state == "PENDING_APPROVAL"  # type: ignore[attr-defined]
    out = b.receive(topic("config"), cfg_bytes(), T0 + 2)
    assert any(o.topic.endswith("config_response") for o in out)
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 3)
    assert b.refusals[-1] == ("command", "PENDING_APPROVAL")
    b.receive(topic("system/heartbeat/ack"), ack(), T0 + 4)
    assert b.system_state == "OPERATIONAL"  # type: ignore[attr-defined]
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 5)
    assert b.actuators[5].state


def test_rejected_ack_puts_the_board_in_error_state() -> None:
    """status rejected: STATE_ERROR (runtime degraded: commands refused, config admitted)."""
    b = registered_with_config()
    b.receive(topic("system/heartbeat/ack"), ack(status="rejected"), T0 + 3)
    assert b.system_state == "ERROR"  # type: ignore[attr-defined]
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 4)
    assert b.refusals[-1] == ("command", "RUNTIME_DEGRADED")
    b.receive(topic("system/heartbeat/ack"), ack(), T0 + 5)
    assert b.system_state == "OPERATIONAL"  # type: ignore[attr-defined]


def test_a_board_approved_before_boots_operational() -> None:
    b = current()
    b.receive(topic("system/heartbeat/ack"), ack(), T0 + 1)
    b.reboot(T0 + 100)
    assert b.system_state == "OPERATIONAL"  # type: ignore[attr-defined]
    assert not b.registered  # but the gate is closed again after every connect


def test_legacy_does_not_subscribe_to_the_ack() -> None:
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0)
    assert all(not f.endswith("heartbeat/ack") for f, _ in b.subscriptions())
    assert b.receive(topic("system/heartbeat/ack"), ack(), T0 + 1) == []
    assert b.refusals[-1][0] == "ack" and "not subscribed" in b.refusals[-1][1]


# --------------------------------------------------------- 120 s without ack


def test_120_s_without_a_valid_ack_drives_every_actuator_to_its_safe_state() -> None:
    """main.cpp checkServerAckTimeout -> setAllActuatorsToSafeState (default_state)."""
    b = registered_with_config()
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 3)
    b.receive(topic("actuator/18/command"), b'{"command":"ON"}', T0 + 3)
    assert b.actuators[5].state and b.actuators[18].state
    b.tick(T0 + 120)
    assert b.actuators[5].state  # last valid ack at T0 + 1: not yet
    out = b.tick(T0 + 122)
    assert not b.actuators[5].state and not b.actuators[18].state and b.safe_state
    statuses = [json.loads(o.payload) for o in out if o.topic.endswith("/status")]
    assert [(s["gpio"], s["state"]) for s in statuses[-2:]] == [(5, False), (18, False)]


def test_unanswered_heartbeats_count_from_the_connect() -> None:
    """g_last_server_ack_ms is reset at every connect: the 120 s count from there."""
    b = new_board("current", ESP, now=T0)
    b.connect(T0 + 50)
    assert b.next_due() is not None
    b.tick(T0 + 169)
    assert not b.safe_state
    b.tick(T0 + 171)
    assert b.safe_state


def test_valid_acks_keep_the_board_out_of_safe_state() -> None:
    b = registered_with_config()
    for i in range(1, 6):
        b.tick(T0 + 60 * i)
        b.receive(topic("system/heartbeat/ack"), ack(), T0 + 60 * i)
    assert not b.safe_state


def test_acks_with_epoch_0_do_not_count_so_the_board_goes_safe() -> None:
    """Kaiser before issue 9 acked with handover_epoch 0: never registered, safe at 120 s."""
    b = current()
    for i in range(0, 130, 5):
        b.receive(topic("system/heartbeat/ack"), ack(0), T0 + i)
    assert not b.registered and b.safe_state


def test_after_a_long_silence_only_the_boards_own_epoch_is_accepted() -> None:
    """offline_mode_manager.cpp: 120 s without ack -> DISCONNECTED, 30 s later OFFLINE_ACTIVE;
    then an ack needs a non-zero active_handover_epoch (MISSING_ACTIVE_SESSION_EPOCH) until
    the server is back (server/status online or a reconnect: epoch + 1), and then exactly it."""
    b = registered_with_config()
    b.tick(T0 + 160)
    assert b.mode == "OFFLINE_ACTIVE"  # type: ignore[attr-defined]
    b.receive(topic("system/heartbeat/ack"), ack(1), T0 + 161)
    assert b.refusals[-1] == ("ack", "MISSING_ACTIVE_SESSION_EPOCH")
    b.receive(f"kaiser/{K}/server/status", b'{"status":"online","timestamp":1796000161}', T0 + 162)
    assert b.epoch == 1 and b.mode == "RECONNECTING"  # type: ignore[attr-defined]
    b.receive(topic("system/heartbeat/ack"), ack(2), T0 + 163)
    assert b.refusals[-1] == ("ack", "HANDOVER_EPOCH_MISMATCH")
    out = b.receive(topic("system/heartbeat/ack"), ack(1), T0 + 164)
    assert b.mode == "ADOPTING" and not b.safe_state  # type: ignore[attr-defined]
    assert {o.topic for o in out} == {topic("actuator/5/status"), topic("actuator/18/status")}
    b.tick(T0 + 167)
    assert b.mode == "ONLINE"  # type: ignore[attr-defined]


def test_reconnect_after_offline_mode_raises_the_epoch_and_heartbeat_reports_it() -> None:
    """onMqttConnectCallback -> offlineModeManager.onReconnect(); the heartbeat carries
    active_handover_epoch, the session announce the same number."""
    b = registered_with_config()
    b.disconnect(T0 + 10)
    assert b.safe_state
    b.tick(T0 + 45)
    out = b.connect(T0 + 50)
    announce = json.loads(out[0].payload)
    hb = json.loads(out[-1].payload)
    assert announce["handover_epoch"] == hb["active_handover_epoch"] == b.epoch == 1
    b.receive(topic("system/heartbeat/ack"), ack(b.epoch), T0 + 51)
    assert b.registered


def test_quick_reconnect_within_the_grace_period_accepts_any_epoch() -> None:
    b = registered_with_config()
    b.disconnect(T0 + 10)
    b.connect(T0 + 12)
    assert b.epoch == 0 and b.mode == "ONLINE"  # type: ignore[attr-defined]
    b.receive(topic("system/heartbeat/ack"), ack(7), T0 + 13)
    assert b.registered
