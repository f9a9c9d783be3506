"""Twin: ``kaiser/{k}/server/status`` (current firmware only, main.cpp SAFETY-P5 branch)."""

from __future__ import annotations

import json

from engine.firmware import new_board

T0 = 1_796_000_000.0
ESP = "ESP_12AB34"
STATUS = "kaiser/god/server/status"


def topic(tail: str) -> str:
    return f"kaiser/god/esp/{ESP}/{tail}"


ACK = b'{"status":"online","config_available":false,"server_time":1796000000,"handover_epoch":1}'
OFFLINE = b'{"status":"offline","reason":"unexpected_disconnect","timestamp":1796000000}'
GRACEFUL = b'{"status":"offline","reason":"graceful_shutdown","timestamp":1796000000}'
ONLINE = b'{"status":"online","timestamp":1796000000}'
CONFIG = json.dumps({"correlation_id": "c1", "sensors": [],
                     "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"},
                                   {"gpio": 18, "actuator_type": "relay", "actuator_name": "heater",
                                    "default_state": True}]}).encode()


def running():  # type: ignore[no-untyped-def]
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("system/heartbeat/ack"), ACK, T0 + 1)
    b.receive(topic("config"), CONFIG, T0 + 2)
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 3)
    b.receive(topic("actuator/18/command"), b'{"command":"OFF"}', T0 + 3)
    assert b.actuators[5].state and not b.actuators[18].state
    return b


def test_current_subscribes_to_server_status_with_qos_1() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    assert (STATUS, 1) in b.subscriptions()


def test_offline_drives_every_actuator_to_its_default_state() -> None:
    """setAllActuatorsToSafeState: default_state, not simply off."""
    b = running()
    b.receive(STATUS, OFFLINE, T0 + 10)
    assert b.safe_state
    assert not b.actuators[5].state and b.actuators[18].state


def test_online_takes_the_board_back_without_switching_anything() -> None:
    b = running()
    b.receive(STATUS, OFFLINE, T0 + 10)
    b.receive(STATUS, ONLINE, T0 + 12)
    assert not b.safe_state and b.mode == "ONLINE"  # type: ignore[attr-defined]
    assert not b.actuators[5].state


def test_commands_still_work_during_server_offline() -> None:
    """The gate stays open (registration is only reset by a reconnect)."""
    b = running()
    b.receive(STATUS, OFFLINE, T0 + 10)
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 11)
    assert b.actuators[5].state


def test_retained_offline_is_honoured_at_the_first_connect() -> None:
    """At boot (no reconnect yet) a retained offline is live."""
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(STATUS, OFFLINE, T0, retained=True)
    assert b.safe_state and b.mode == "DISCONNECTED"  # type: ignore[attr-defined]


def test_retained_unexpected_disconnect_right_after_a_reconnect_is_ignored() -> None:
    """likely_stale_retain: reason unexpected_disconnect, a reconnect, < 15 s since it,
    not registered yet -> ignored (the firmware does not look at the retain flag)."""
    b = running()
    b.disconnect(T0 + 5)
    b.connect(T0 + 6)
    b.receive(STATUS, OFFLINE, T0 + 6, retained=True)
    assert b.refusals[-1][0] == "server_status"
    assert b.mode == "ONLINE"  # type: ignore[attr-defined]


def test_graceful_shutdown_is_honoured_even_right_after_a_reconnect() -> None:
    b = running()
    b.disconnect(T0 + 5)
    b.connect(T0 + 6)
    b.receive(STATUS, GRACEFUL, T0 + 6, retained=True)
    assert b.mode == "DISCONNECTED"  # type: ignore[attr-defined]


def test_unexpected_disconnect_after_15_s_is_honoured() -> None:
    b = running()
    b.disconnect(T0 + 5)
    b.connect(T0 + 6)
    b.receive(STATUS, OFFLINE, T0 + 22)
    assert b.mode == "DISCONNECTED"  # type: ignore[attr-defined]


def test_offline_for_more_than_30_s_makes_the_next_ack_need_the_boards_epoch() -> None:
    b = running()
    b.receive(STATUS, OFFLINE, T0 + 10)
    b.tick(T0 + 41)
    assert b.mode == "OFFLINE_ACTIVE"  # type: ignore[attr-defined]
    b.receive(STATUS, ONLINE, T0 + 50)
    assert b.epoch == 1
    hb = [o for o in b.tick(T0 + 61) if o.topic.endswith("/system/heartbeat")]
    assert json.loads(hb[-1].payload)["active_handover_epoch"] == 1


def test_legacy_ignores_server_status() -> None:
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0)
    assert all("server/status" not in f for f, _ in b.subscriptions())
    b.receive(STATUS, OFFLINE, T0 + 1)
    assert not b.safe_state
