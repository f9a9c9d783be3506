"""Twin: what the boards publish and subscribe, last will, reconnect, reboot, retained
messages, and the ArduinoJson parse the boards use."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.firmware import ajson, new_board, topic_matches

T0 = 1_796_000_000.0
ESP = "ESP_12AB34"
ACK = b'{"status":"online","config_available":false,"server_time":1796000000,"handover_epoch":1}'
CONFIG = {"correlation_id": "c1", "sensors": [{"gpio": 32, "sensor_type": "ph", "sensor_name": "ph"}],
          "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"}]}


def topic(tail: str) -> str:
    return f"kaiser/god/esp/{ESP}/{tail}"


def enc(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# ---------------------------------------------------------------- will


def test_legacy_will() -> None:
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0 + 2)
    w = b.will()
    assert (w.topic, w.qos, w.retain) == (topic("system/will"), 1, True)
    assert json.loads(w.payload) == {"status": "offline", "reason": "unexpected_disconnect", "timestamp": 2000}


def test_current_will() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0 + 2)
    w = b.will()
    assert (w.topic, w.qos, w.retain) == (topic("system/will"), 1, True)
    assert json.loads(w.payload) == {"status": "offline", "esp_id": ESP, "reason": "unexpected_disconnect",
                                     "timestamp": int(T0) + 2}


# -------------------------------------------------------- subscriptions


def test_legacy_subscribes_qos_0_and_loses_it_all_after_a_reconnect() -> None:
    """setup() subscribes once; MQTTClient::reconnect -> connectToBroker never resubscribes
    and PubSubClient connects with a clean session."""
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0)
    subs = b.subscriptions()
    assert [q for _, q in subs] == [0] * 6
    assert {f for f, _ in subs} == {topic("system/command"), topic("config"), "kaiser/broadcast/emergency",
                                    topic("actuator/+/command"), topic("actuator/emergency"), topic("zone/assign")}
    b.disconnect(T0 + 5)
    b.connect(T0 + 6)
    assert b.subscriptions() == []
    assert b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 7) == []
    b.reboot(T0 + 8)
    assert len(b.subscriptions()) == 6


def test_current_resubscribes_at_every_connect() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    before = b.subscriptions()
    b.disconnect(T0 + 5)
    assert b.subscriptions() == []
    b.connect(T0 + 6)
    assert b.subscriptions() == before and len(before) == 12


def test_current_xiao_pubsubclient_cannot_subscribe_with_qos_2() -> None:
    """platformio.ini: XIAO builds MQTT_USE_PUBSUBCLIENT=1; PubSubClient::subscribe returns
    false for QoS > 1, so config, commands, system commands and the broadcast stop never arrive."""
    b = new_board("current", ESP, board_kind="xiao_esp32c3", now=T0)
    b.connect(T0)
    assert all(q <= 1 for _, q in b.subscriptions())
    assert topic("config") not in {f for f, _ in b.subscriptions()}
    assert (topic("system/heartbeat/ack"), 1) in b.subscriptions()
    b.tick(T0 + 5)
    b.receive(topic("system/heartbeat/ack"), ACK, T0 + 6)
    assert b.registered
    assert b.receive(topic("config"), enc(CONFIG), T0 + 7) == [] and b.actuators == {}
    out = b.tick(T0 + 70)
    assert all((o.qos, o.retain) == (0, False) for o in out)


def test_topic_filter_matching() -> None:
    assert topic_matches("kaiser/god/esp/X/actuator/+/command", "kaiser/god/esp/X/actuator/5/command")
    assert not topic_matches("kaiser/god/esp/X/actuator/+/command", "kaiser/god/esp/X/actuator/emergency")
    assert topic_matches("kaiser/#", "kaiser/a/b")


# ---------------------------------------------------------------- QoS/retain


def test_legacy_publishes_its_qos_1_messages_as_qos_0_retained() -> None:
    """MQTTClient::publish: mqtt_.publish(topic, payload, qos == 1) -> the retain flag."""
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("config"), enc(CONFIG), T0 + 1)
    out = b.reading(32, T0 + 2, raw=2150, value=6.19, quality="fair", unit="pH")
    assert [(o.qos, o.retain) for o in out] == [(0, True)]
    assert json.loads(out[0].payload) == {
        "esp_id": ESP, "zone_id": "", "subzone_id": "", "gpio": 32, "sensor_type": "ph", "raw_value": 2150,
        "processed_value": 6.19, "unit": "pH", "quality": "fair", "timestamp": 2000}


def test_legacy_negative_raw_goes_out_as_unsigned_32_bit() -> None:
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("config"), enc({"sensors": [{"gpio": 27, "sensor_type": "ds18b20", "sensor_name": "t"}],
                                    "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "f"}]}),
              T0 + 1)
    (o,) = b.reading(27, T0 + 2, raw=-40)
    assert json.loads(o.payload)["raw_value"] == 2**32 - 40


def test_current_publishes_with_the_qos_asked_and_never_retained() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("system/heartbeat/ack"), ACK, T0)
    out = b.receive(topic("config"), enc(CONFIG), T0 + 1)
    out += b.tick(T0 + 61)
    assert {(o.topic.rsplit("/", 1)[1], o.qos, o.retain) for o in out} >= {
        ("config_response", 1, False), ("heartbeat", 0, False)}
    assert not any(o.retain for o in out)


def test_retained_messages_are_handled_as_live() -> None:
    """Neither generation looks at the retain flag: a retained command is executed."""
    for gen in ("legacy", "current"):
        b = new_board(gen, ESP, now=T0)
        b.connect(T0)
        if gen == "current":
            b.receive(topic("system/heartbeat/ack"), ACK, T0)
        b.receive(topic("config"), enc(CONFIG), T0 + 1, retained=True)
        b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 2, retained=True)
        assert b.actuators[5].state


# ------------------------------------------------------------------ reboot


def test_legacy_forgets_actuators_but_remembers_sensors_on_reboot() -> None:
    b = new_board("legacy", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("config"), enc(CONFIG), T0 + 1)
    b.tick(T0 + 300)
    b.reboot(T0 + 301)
    assert b.actuators == {} and set(b.sensors) == {32}
    assert b.uptime(T0 + 311) == 10


def test_current_keeps_sensors_actuators_and_approval_in_nvs() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("system/heartbeat/ack"), ACK, T0)
    b.receive(topic("config"), enc(CONFIG), T0 + 1)
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 2)
    out = b.reboot(T0 + 100)
    assert set(b.actuators) == {5} and set(b.sensors) == {32}
    assert not b.actuators[5].state  # back at its default_state
    assert b.system_state == "OPERATIONAL" and not b.registered  # type: ignore[attr-defined]
    hb = json.loads(out[-1].payload)
    assert hb["uptime"] == 0 and hb["reset_reason"] == "SW" and hb["boot_sequence_id"] == f"{ESP}-b2-r3"


def test_current_partial_config_after_reset_blocks_commands_until_a_config() -> None:
    """setup(): evaluateRuntimeReadiness (sensor and actuator required) ->
    CONFIG_PENDING_AFTER_RESET; commands refused until a config commit makes it ready."""
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("system/heartbeat/ack"), ACK, T0)
    b.receive(topic("config"), enc({**CONFIG, "sensors": []}), T0 + 1)
    b.reboot(T0 + 10)
    b.receive(topic("system/heartbeat/ack"), ACK, T0 + 11)
    assert b.system_state == "CONFIG_PENDING_AFTER_RESET"  # type: ignore[attr-defined]
    b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 12)
    assert b.refusals[-1] == ("command", "CONFIG_PENDING_AFTER_RESET")
    b.receive(topic("config"), enc(CONFIG), T0 + 13)
    assert b.system_state == "OPERATIONAL"  # type: ignore[attr-defined]


def test_six_quick_reboots_are_a_boot_loop() -> None:
    """main.cpp setup(): boot_count > 5 before 60 s of stable running -> safe mode without MQTT."""
    b = new_board("current", ESP, now=T0)
    for i in range(1, 6):
        b.reboot(T0 + i)
    assert b.boot_loop and not b.connected
    c = new_board("current", ESP, now=T0)
    for i in range(1, 6):
        c.reboot(T0 + 70 * i)
    assert not c.boot_loop and c.connected


# ------------------------------------------------------------ ArduinoJson


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
                    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=3)),
                    max_leaves=8))
def test_arduinojson_reads_standard_json_like_json(value: Any) -> None:
    raw = json.dumps(value).encode()
    try:
        parsed = ajson.parse(raw)
    except ajson.JsonError as e:
        assert e.code == "TooDeep"
        return
    assert parsed == json.loads(raw)


def test_arduinojson_leniency_and_strictness() -> None:
    assert ajson.parse(b"{'a':1}") == {"a": 1}
    assert ajson.parse(b"{a:1}") == {"a": 1}
    assert ajson.parse(b'{"a":1} trailing') == {"a": 1}
    assert ajson.parse(b'{"a":1}\0{"b":2}') == {"a": 1}
    assert ajson.parse(b'{"a":1,"a":2}') == {"a": 2}
    for bad, code in ((b'{"a":NaN}', "InvalidInput"), (b'{"a":', "IncompleteInput"), (b"", "EmptyInput"),
                      (b"[" * 11 + b"]" * 11, "TooDeep")):
        with pytest.raises(ajson.JsonError) as e:
            ajson.parse(bad)
        assert e.value.code == code


def test_arduinojson_memory_accounting() -> None:
    """16 bytes per member/element plus each distinct string (+NUL), unless zero-copy."""
    assert ajson.memory(b'{"status":"online","handover_epoch":1}') == 2 * 16 + 7 + 15 + 7
    assert ajson.memory(b'["ab","ab"]') == 2 * 16 + 3
    assert ajson.memory(b'{"status":"online"}', zero_copy=True) == 16
    with pytest.raises(ajson.JsonError) as e:
        ajson.parse(b'{"k":"' + b"x" * 300 + b'"}', 256)
    assert e.value.code == "NoMemory"


@pytest.mark.parametrize(("value", "is_int", "is_uint32"), [
    (1, True, True), (-1, True, False), (2**31, False, True), (2**32, False, False), (1.0, False, False),
    (True, False, False), ("1", False, False), (None, False, False)])
def test_arduinojson_type_predicates(value: object, is_int: bool, is_uint32: bool) -> None:
    assert ajson.is_int(value) is is_int
    assert ajson.is_uint32(value) is is_uint32


def test_json_helpers_extract() -> None:
    """utils/json_helpers.h: extractInt takes any number (truncated), extractBool also
    takes int and "true"/"1"/"false"/"0" strings, extractString only strings."""
    assert ajson.extract_int({"g": 4.9}, "g") == 4
    assert ajson.extract_int({"g": "4"}, "g") is None
    assert ajson.extract_bool({"a": "FALSE"}, "a") is False
    assert ajson.extract_bool({"a": 2}, "a") is True
    assert ajson.extract_bool({"a": 1.0}, "a") is None
    assert ajson.extract_string({"s": 5}, "s") is None


def test_reading_picks_one_of_several_sensors_on_a_gpio() -> None:
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    b.receive(topic("system/heartbeat/ack"), ACK, T0)
    b.receive(topic("config"), enc({"correlation_id": "c", "sensors": [
        {"gpio": 4, "sensor_type": "ds18b20", "sensor_name": "a", "onewire_address": "28FF641E8516034A"},
        {"gpio": 4, "sensor_type": "ds18b20", "sensor_name": "b", "onewire_address": "28FF0B2A91160577"}]}), T0)
    (o,) = b.reading(4, T0 + 1, raw=300, onewire_address="28FF0B2A91160577")
    assert json.loads(o.payload)["onewire_address"] == "28FF0B2A91160577"
    assert b.reading(4, T0 + 1, raw=300, onewire_address="28FF000000000000") == []
