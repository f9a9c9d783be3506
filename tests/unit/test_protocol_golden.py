"""One golden test per kind of message Kaiser sends to a board: the exact bytes
(tests/golden/protocol/server_to_board.json) and what each firmware generation's
twin does with them. A change to a payload shows up here twice: as a diff of
bytes, and as a board that no longer acts on it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import codec
from engine.firmware import Board, new_board
from engine.firmware.board import topic_matches
from engine.model import Actuator, Sensor

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "protocol" / "server_to_board.json"
K, ESP, T0 = "god", "ESP_00A1B2", 1_796_000_000.0

SENSORS = [Sensor("north", "air_temp", 14, "ds18b20", onewire_address="28FF641E8D3C0C79"),
           Sensor("north", "soil", 32, "moisture")]
ACTUATORS = [Actuator("north", "heater", 18, "relay"), Actuator("north", "vent", 25, "pwm")]


def _config(removed: bool = False) -> codec.Outgoing:
    s = [codec.sensor_item(x) for x in SENSORS]
    a = [codec.actuator_item(x) for x in ACTUATORS]
    if removed:
        a = [a[0], codec.removal(a[1], "actuator")]
    (out,) = codec.encode_configs(K, ESP, s, a, iter(["cfg-ESP_00A1B2-7"]))
    return out


#: kind -> the message Kaiser sends
MESSAGES: dict[str, Callable[[], codec.Outgoing]] = {
    "heartbeat_ack": lambda: codec.encode_heartbeat_ack(K, ESP, server_time=T0, handover_epoch=1),
    "config": _config,
    "config_removal": lambda: _config(removed=True),
    "command_on_for": lambda: codec.encode_command(K, ESP, 18, "relay", 1.0, 30),
    "command_off": lambda: codec.encode_command(K, ESP, 18, "relay", 0.0),
    "command_pwm": lambda: codec.encode_command(K, ESP, 25, "pwm", 0.4, 30),
    "command_toggle": lambda: codec.encode_command(K, ESP, 18, "relay", 0.0, toggle=True),
    "broadcast_stop": lambda: codec.encode_emergency("tank empty", timestamp=T0),
    "board_stop": lambda: codec.encode_device_emergency(K, ESP, "s3cret", "smoke"),
    "board_clear": lambda: codec.encode_device_emergency(K, ESP, "s3cret", clear=True),
    "server_online": lambda: codec.encode_server_status(K, online=True, timestamp=T0),
    "server_offline": lambda: codec.encode_server_status(K, online=False, timestamp=T0, reason="graceful_shutdown"),
}


def _golden() -> dict[str, dict[str, object]]:
    return {k: {"topic": m.topic, "payload": m.payload.decode(), "qos": m.qos, "retain": m.retain}
            for k, m in ((k, f()) for k, f in MESSAGES.items())}


def test_payloads_match_the_golden_file() -> None:
    got = _golden()
    if os.environ.get("KAISER_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n")
    assert got == json.loads(GOLDEN.read_text())
    # nothing but the server's own status is retained: a board replays retained as live
    assert [k for k, v in got.items() if v["retain"]] == ["server_online", "server_offline"]


def _ready(generation: str) -> Board:
    """A registered board with the golden config and a token stored."""
    b = new_board(generation, ESP, kaiser_id=K, now=T0, emergency_token="s3cret")
    b.connect(T0)
    b.tick(T0 + 61)  # legacy's first heartbeat
    send(b, "heartbeat_ack", T0 + 61)
    send(b, "config", T0 + 62)
    assert b.refusals == [], b.refusals
    return b


def send(b: Board, kind: str, now: float) -> list[codec.Outgoing]:
    m = MESSAGES[kind]()
    if not any(topic_matches(f, m.topic) for f, _ in b.subscriptions()):
        return []
    return b.receive(m.topic, m.payload, now, m.retain)


@pytest.mark.parametrize("gen", ["legacy", "current"])
def test_each_message_does_on_each_generation_what_kaiser_means(gen: str) -> None:
    b = _ready(gen)
    t = T0 + 100
    assert gen == "legacy" or b.registered
    assert {g for g, a in b.actuators.items() if a.active} == {18, 25}
    send(b, "command_on_for", t)
    assert b.actuators[18].state
    send(b, "command_pwm", t)
    assert b.actuators[25].pwm == round(0.4 * 255)
    send(b, "command_off", t)
    assert not b.actuators[18].state
    send(b, "command_toggle", t)
    assert b.actuators[18].state
    send(b, "config_removal", t + 1)
    assert not b.actuators[25].active if 25 in b.actuators else True
    send(b, "broadcast_stop", t + 2)
    assert b.latched and not b.actuators[18].state
    assert b.refusals == [], b.refusals
    if gen == "current":
        send(b, "board_clear", t + 10)  # after the 5 s the firmware waits
        assert not b.latched
        send(b, "board_stop", t + 11)
        assert b.latched
        send(b, "board_clear", t + 20)
        assert not b.latched
        send(b, "server_offline", t + 21)
        assert b.safe_state
        send(b, "server_online", t + 22)
        assert b.refusals == [], b.refusals
    else:  # legacy acts on neither per-board message; a config push clears its latch
        send(b, "board_clear", t + 10)
        assert b.latched
        send(b, "config", t + 11)
        assert not b.latched
    assert not any(a.state for a in b.actuators.values()), "nothing comes back on by itself"
