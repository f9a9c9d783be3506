"""The firmware wire format: PROTOCOL.md fixtures, rejections, encoders, round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sensors
from engine import codec
from engine.codec import (
    ActuatorAlert,
    ActuatorResponse,
    ActuatorStatus,
    ConfigResponse,
    Diagnostics,
    Heartbeat,
    Rejection,
    SensorData,
    Will,
    ZoneAck,
    decode,
)
from engine.errors import CodecError
from engine.model import Actuator, Device, Sensor

NOW = 1795000010.0  # receive time used throughout (2026-11)
ESP = "ESP_A1B2C3"
BASE = f"kaiser/god/esp/{ESP}"


def _fixtures() -> list[tuple[str, bytes]]:
    """The 'Example traffic' block of PROTOCOL.md, line by line."""
    for p in (Path(__file__).resolve().parents[3] / "shared" / "PROTOCOL.md", Path("/work/shared/PROTOCOL.md")):
        if p.exists():
            block = p.read_text().split("## Example traffic")[1].split("```")[1]
            return [(t, b.encode()) for t, b in (ln.split(None, 1) for ln in block.strip().splitlines())]
    return list(FALLBACK)


FALLBACK = [  # a copy, so the tests run without the shared folder
    (f"{BASE}/sensor/32/data", b'{"esp_id":"ESP_A1B2C3","zone_id":"greenhouse_1","subzone_id":"bed_a","gpio":32,"sensor_type":"ph","raw_value":2150,"processed_value":6.19,"unit":"pH","quality":"fair","timestamp":1834567}'),
    (f"{BASE}/sensor/27/data", b'{"esp_id":"ESP_A1B2C3","seq":812,"zone_id":"greenhouse_1","subzone_id":"","gpio":27,"sensor_type":"ds18b20","raw":344,"value":0,"unit":"","quality":"good","ts":1795000000,"time_valid":true,"raw_mode":true}'),
    (f"{BASE}/system/heartbeat", b'{"esp_id":"ESP_A1B2C3","zone_id":"greenhouse_1","master_zone_id":"greenhouse","zone_assigned":true,"ts":3600123,"uptime":3600,"heap_free":187432,"wifi_rssi":-61,"sensor_count":4,"actuator_count":3}'),
    (f"{BASE}/system/heartbeat", b'{"esp_id":"ESP_A1B2C3","zone_id":"greenhouse_1","master_zone_id":"greenhouse","zone_assigned":true,"ts":1795000000,"time_valid":true,"boot_sequence_id":"b-3","reset_reason":"POWERON","uptime":3600,"heap_free":150000,"wifi_rssi":-58,"sensor_count":4,"actuator_count":3,"active_handover_epoch":0,"handover_completed_epoch":0,"handover_contract_last_reject":"INVALID_HANDOVER_EPOCH","config_status":{"sensors":4,"actuators":3}}'),
    (f"{BASE}/actuator/16/status", b'{"esp_id":"ESP_A1B2C3","zone_id":"greenhouse_1","subzone_id":"bed_a","ts":3702250,"gpio":16,"type":"pump","state":true,"pwm":255,"runtime_ms":125000,"emergency":"normal"}'),
    (f"{BASE}/actuator/16/response", b'{"esp_id":"ESP_A1B2C3","zone_id":"greenhouse_1","ts":3702248,"gpio":16,"command":"ON","value":1.000,"duration":0,"success":true,"message":"Command executed"}'),
    (f"{BASE}/actuator/16/alert", b'{"ts":3800500,"gpio":16,"type":"emergency_stop","message":"Actuator stopped"}'),
    (f"{BASE}/config_response", b'{"status":"error","type":"actuator","count":0,"message":"Failed to configure actuator on GPIO 34","error_code":"UNKNOWN_ERROR","failed_item":{"gpio":34,"actuator_type":"pump","actuator_name":"Pump 2"}}'),
    (f"{BASE}/system/will", b'{"status":"offline","reason":"unexpected_disconnect","timestamp":8123}'),
]

FIXTURES = _fixtures()


def dec(topic: str, payload: bytes | str | dict, **kw):
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    kw.setdefault("received_at", NOW)
    return decode(topic, payload, **kw)


def test_fixture_list_is_complete():
    assert len(FIXTURES) == 9


# --------------------------------------------------------------------------
# PROTOCOL.md example traffic


def test_fixture_legacy_ph_reading():
    m = dec(*FIXTURES[0])
    assert isinstance(m, SensorData)
    assert (m.kaiser_id, m.esp_id, m.zone_id, m.subzone_id, m.batch) == ("god", ESP, "greenhouse_1", "bed_a", False)
    (v,) = m.values
    assert (v.gpio, v.sensor_type, v.raw, v.value, v.unit, v.quality) == (32, "ph", 2150.0, 6.19, "pH", "fair")
    assert v.raw_mode is None and v.needs_processing  # legacy: raw present, raw_mode not sent
    # 1834567 ms since boot: stamped with the receive time
    assert (v.ts_kind, v.ts, v.device_ts) == ("uptime", NOW, 1834567.0)
    assert round(sensors.process(v.sensor_type, v.raw).value, 2) == 6.19


def test_fixture_current_ds18b20_reading():
    m = dec(*FIXTURES[1])
    assert isinstance(m, SensorData)
    (v,) = m.values
    assert (v.gpio, v.sensor_type, v.raw, v.raw_mode, v.seq) == (27, "ds18b20", 344.0, True, 812)
    assert (v.ts_kind, v.ts) == ("unix_s", 1795000000.0)
    assert v.subzone_id is None  # "" means none
    assert v.needs_processing
    assert sensors.process(v.sensor_type, v.raw) == sensors.Processed(21.5, "°C", "excellent")


def test_fixture_heartbeat():
    m = dec(*FIXTURES[2])
    assert isinstance(m, Heartbeat)
    assert (m.uptime, m.heap_free, m.wifi_rssi, m.sensor_count, m.actuator_count) == (3600, 187432, -61, 4, 3)
    assert (m.zone_id, m.master_zone_id, m.zone_assigned) == ("greenhouse_1", "greenhouse", True)
    assert (m.ts_kind, m.ts) == ("uptime", NOW)
    assert m.fields is not None and m.fields["heap_free"] == 187432


def test_fixture_current_heartbeat_tells_the_generation_and_its_epoch():
    m = dec(*FIXTURES[3])
    assert isinstance(m, Heartbeat)
    assert (m.generation, m.handover_epoch, m.boot_sequence_id) == ("current", 0, "b-3")
    assert dec(*FIXTURES[2]).generation is None  # legacy says too little to tell


def test_fixture_actuator_status():
    m = dec(*FIXTURES[4])
    assert isinstance(m, ActuatorStatus)
    assert (m.gpio, m.actuator_type, m.state, m.pwm, m.runtime_ms, m.emergency) == (16, "pump", True, 255, 125000, False)
    assert m.value == 1.0
    assert (m.zone_id, m.subzone_id) == ("greenhouse_1", "bed_a")


def test_fixture_actuator_response():
    m = dec(*FIXTURES[5])
    assert isinstance(m, ActuatorResponse)
    assert (m.gpio, m.command, m.value, m.duration, m.success, m.message) == (16, "ON", 1.0, 0.0, True, "Command executed")


def test_fixture_actuator_alert():
    m = dec(*FIXTURES[6])
    assert isinstance(m, ActuatorAlert)
    assert (m.gpio, m.alert_type, m.message, m.whole_board) == (16, "emergency_stop", "Actuator stopped", False)


def test_fixture_config_response():
    m = dec(*FIXTURES[7])
    assert isinstance(m, ConfigResponse)
    assert (m.status, m.config_type, m.count, m.error_code, m.ok) == ("error", "actuator", 0, "UNKNOWN_ERROR", False)
    assert m.failed_item == {"gpio": 34, "actuator_type": "pump", "actuator_name": "Pump 2"}
    assert "GPIO 34" in m.message


def test_fixture_will():
    m = dec(*FIXTURES[8])
    assert isinstance(m, Will)
    assert (m.status, m.reason, m.ts_kind, m.ts) == ("offline", "unexpected_disconnect", "uptime", NOW)


# --------------------------------------------------------------------------
# other forms


def test_batch_gives_several_values_and_inherits_the_batch_time():
    m = dec(f"{BASE}/sensor/batch", {"ts": 1795000001, "esp_id": ESP, "sensors": [
        {"gpio": 21, "sensor_type": "sht31_temp", "value": 21.5, "unit": "°C", "quality": "good"},
        {"gpio": 21, "sensor_type": "sht31_humidity", "value": 55.0, "unit": "%", "quality": "good"},
        {"gpio": 34, "sensor_type": "moisture", "raw": 2300, "ts": 1795000002},
    ]})
    assert isinstance(m, SensorData) and m.batch
    assert [(v.gpio, v.sensor_type, v.value, v.raw) for v in m.values] == [
        (21, "sht31_temp", 21.5, None), (21, "sht31_humidity", 55.0, None), (34, "moisture", None, 2300.0)]
    assert [v.ts for v in m.values] == [1795000001.0, 1795000001.0, 1795000002.0]
    assert not m.values[0].needs_processing and m.values[2].needs_processing


def test_batch_keeps_good_items_and_says_why_others_were_dropped():
    m = dec(f"{BASE}/sensor/batch", {"sensors": [{"gpio": 4, "sensor_type": "ds18b20", "raw": 344},
                                                 {"gpio": 99, "sensor_type": "ds18b20", "raw": 1}, "junk"]})
    assert isinstance(m, SensorData)
    assert len(m.values) == 1
    assert len(m.skipped) == 2 and "sensors[1]" in m.skipped[0] and "gpio 99" in m.skipped[0]
    r = dec(f"{BASE}/sensor/batch", {"sensors": ["junk"]})
    assert isinstance(r, Rejection) and "no usable reading" in r.reason
    r = dec(f"{BASE}/sensor/batch", {"sensors": []})
    assert isinstance(r, Rejection)


def test_zone_master_form_takes_zone_and_subzone_from_the_topic():
    m = dec(f"kaiser/god/zone/greenhouse_1/esp/{ESP}/subzone/bed_b/sensor/4/data",
            {"gpio": 4, "sensor_type": "DS18B20", "raw": 344})
    assert isinstance(m, SensorData)
    (v,) = m.values
    assert (m.esp_id, v.gpio, v.sensor_type, v.zone_id, v.subzone_id) == (ESP, 4, "ds18b20", "greenhouse_1", "bed_b")


def test_unprovisioned_board_with_empty_kaiser_id():
    m = dec(f"kaiser//esp/{ESP}/system/heartbeat", {"uptime": 5})
    assert isinstance(m, Heartbeat) and m.kaiser_id == ""


@pytest.mark.parametrize("esp", ["ESP_ABCDEF", "ESP_12AB34CD", "ESP_1234567"])
def test_esp_ids_of_6_to_8_hex_digits(esp):
    assert isinstance(dec(f"kaiser/god/esp/{esp}/system/heartbeat", {}), Heartbeat)


@pytest.mark.parametrize("esp", ["ESP_abcdef", "ESP_ABCDE", "ESP_123456789", "esp_ABCDEF", "ESP_GHIJKL", "ESP_ABCDEF\n"])
def test_bad_esp_ids_are_rejected(esp):
    r = dec(f"kaiser/god/esp/{esp}/system/heartbeat", {})
    assert isinstance(r, Rejection) and r.error == "topic" and "esp id" in r.reason


def test_timestamp_classification():
    def kind(payload):
        m = dec(f"{BASE}/sensor/4/data", {"gpio": 4, "sensor_type": "ds18b20", "raw": 1, **payload})
        (v,) = m.values
        return v.ts_kind, v.ts

    assert kind({"ts": 1795000000}) == ("unix_s", 1795000000.0)
    assert kind({"timestamp": 1795000000123}) == ("unix_ms", 1795000000.123)
    assert kind({"ts": 3600123}) == ("uptime", NOW)
    assert kind({"ts": 1795000000, "time_valid": False}) == ("uptime", NOW)
    assert kind({}) == ("none", NOW)
    assert kind({"ts": 1600000000}) == ("uptime", NOW)  # years off: not believable
    r = dec(f"{BASE}/sensor/4/data", {"gpio": 4, "sensor_type": "ds18b20", "raw": 1, "ts": -5})
    assert isinstance(r, Rejection)


def test_retained_messages_are_snapshots():
    m = dec(*FIXTURES[0], retained=True)
    assert m.retained and m.snapshot
    assert not dec(*FIXTURES[0]).snapshot


def test_alert_for_the_whole_board_uses_gpio_255():
    m = dec(f"{BASE}/actuator/255/alert", {"gpio": 255, "type": "emergency_stop", "message": "all off"})
    assert isinstance(m, ActuatorAlert) and m.whole_board
    assert isinstance(dec(f"{BASE}/actuator/255/status", {"state": False}), Rejection)


def test_every_field_spelling_of_both_generations():
    legacy = dec(f"{BASE}/sensor/34/data", {"gpio": 34, "sensor_type": "Moisture", "raw_value": 2000,
                                            "processed_value": 70.5, "quality": "ERROR", "timestamp": 5000})
    current = dec(f"{BASE}/sensor/34/data", {"gpio": 34, "sensor_type": "moisture", "raw": 2000,
                                             "value": 70.5, "quality": "stale", "ts": 1795000000})
    (lv,), (cv,) = legacy.values, current.values
    assert (lv.raw, lv.value, lv.quality, lv.sensor_type) == (2000.0, 70.5, "error", "moisture")
    assert (cv.raw, cv.value, cv.quality) == (2000.0, 70.5, "stale")
    hb = dec(f"{BASE}/system/heartbeat", {"free_heap": 1000, "rssi": -70, "uptime_seconds": 12})
    assert (hb.heap_free, hb.wifi_rssi, hb.uptime) == (1000, -70, 12.0)
    st_ = dec(f"{BASE}/actuator/5/status", {"actuator_type": "pwm", "state": "on", "pwm_value": 51,
                                            "emergency": "active"})
    assert (st_.actuator_type, st_.state, st_.pwm, st_.emergency) == ("pwm", True, 51, True)
    assert st_.value == pytest.approx(0.2)
    al = dec(f"{BASE}/actuator/5/alert", {"alert_type": "runtime_protection"})
    assert al.alert_type == "runtime_protection"
    zr = dec(f"{BASE}/zone/ack", {"status": "zone_assigned", "zone_id": "greenhouse_1", "ts": 1795000000})
    assert isinstance(zr, ZoneAck) and (zr.status, zr.zone_id, zr.ts_kind) == ("zone_assigned", "greenhouse_1", "unix_s")
    dg = dec(f"{BASE}/system/diagnostics", {"heap_free": 100, "uptime_seconds": 7, "error_count": 2})
    assert isinstance(dg, Diagnostics) and (dg.heap_free, dg.uptime, dg.fields["error_count"]) == (100, 7.0, 2)


def test_unknown_keys_are_ignored():
    m = dec(f"{BASE}/sensor/4/data", {"gpio": 4, "sensor_type": "ds18b20", "raw": 344, "firmware": "x", "extra": [1]})
    assert isinstance(m, SensorData)


# --------------------------------------------------------------------------
# rejections


BAD = [
    (f"{BASE}/sensor/4/data", b"{not json", "json", "not valid JSON"),
    (f"{BASE}/sensor/4/data", b"[1, 2]", "json", "JSON object"),
    (f"{BASE}/sensor/4/data", b'"text"', "json", "JSON object"),
    (f"{BASE}/sensor/4/data", b"null", "json", "JSON object"),
    (f"{BASE}/sensor/4/data", b"\xff\xfe{}", "encoding", "UTF-8"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph","raw":NaN}', "json", "NaN"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph","raw":Infinity}', "json", "Infinity"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph","raw":1e999}', "field", "finite"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph","raw":"2150"}', "field", "raw must be a number"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph"}', "field", "raw"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"raw":1}', "field", "sensor_type"),
    (f"{BASE}/sensor/4/data", b'{"gpio":5,"sensor_type":"ph","raw":1}', "field", "disagrees"),
    (f"{BASE}/sensor/4/data", b'{"gpio":"4","sensor_type":"ph","raw":1}', "field", "gpio"),
    (f"{BASE}/sensor/4/data", b'{"esp_id":"ESP_000000","sensor_type":"ph","raw":1}', "field", "esp_id"),
    (f"{BASE}/sensor/4/data", b'{"sensor_type":"ph","raw_mode":true,"value":1}', "field", "raw_mode"),
    (f"{BASE}/sensor/40/data", b'{"sensor_type":"ph","raw":1}', "topic", "gpio 40"),
    (f"{BASE}/sensor/x/data", b'{"sensor_type":"ph","raw":1}', "topic", "gpio"),
    (f"{BASE}/sensor/4/data", b"{" * 5000 + b"}" * 5000, "json", "JSON"),
    (f"{BASE}/sensor/4/data", b"1" * 5000, "json", "JSON"),
    (f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph","raw":' + b"9" * 400 + b"}", "field", "raw"),
    (f"{BASE}/actuator/16/status", b'{"pwm":10}', "field", "state"),
    (f"{BASE}/actuator/16/status", b'{"state":true,"pwm":300}', "field", "pwm"),
    (f"{BASE}/actuator/16/response", b'{"command":"ON"}', "field", "success"),
    (f"{BASE}/actuator/16/alert", b'{"message":"x"}', "field", "type"),
    (f"{BASE}/config_response", b'{"count":1}', "field", "status"),
    (f"{BASE}/sensor/batch", b'{"sensors":{}}', "field", "list"),
    ("kaiser/god/esp", b"{}", "topic", "topic"),
    ("other/god/esp/ESP_A1B2C3/system/heartbeat", b"{}", "topic", "topic"),
    (f"{BASE}/system/heartbeat/ack", b"{}", "topic", "unknown topic"),
    (f"{BASE}/actuator/16/command", b"{}", "topic", "unknown topic"),
    (f"{BASE}/system/heartbeat", b" " * (codec.MAX_PAYLOAD + 1), "size", "limit"),
]


@pytest.mark.parametrize(("topic", "payload", "error", "words"), BAD)
def test_malformed_input_becomes_a_readable_rejection(topic, payload, error, words):
    r = decode(topic, payload, received_at=NOW)
    assert isinstance(r, Rejection), r
    assert r.error == error
    assert words in r.reason
    assert r.topic == topic
    assert str(r).startswith("rejected")


def test_rejection_names_device_and_kind():
    r = dec(f"{BASE}/sensor/4/data", b"nope")
    assert (r.esp_id, r.kind) == (ESP, "sensor_data")
    r = dec("garbage", b"{}")
    assert (r.esp_id, r.kind) == (None, "unknown")


def test_megabyte_payload_is_rejected_before_parsing():
    big = b'{"a":"' + b"x" * (1 << 20) + b'"}'
    r = dec(f"{BASE}/sensor/batch", big)
    assert isinstance(r, Rejection) and r.error == "size" and "1048" in r.reason


def test_non_bytes_arguments_never_raise():
    assert isinstance(decode(None, b"{}", received_at=NOW), Rejection)  # type: ignore[arg-type]
    assert isinstance(decode(f"{BASE}/system/heartbeat", None, received_at=NOW), Rejection)  # type: ignore[arg-type]
    assert isinstance(decode(f"{BASE}/system/heartbeat", bytearray(b"{}"), received_at=NOW), Heartbeat)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# subscriptions


def matches(filt: str, topic: str) -> bool:
    """MQTT topic filter matching (+ and #)."""
    f, t = filt.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


def test_subscriptions_cover_every_device_topic_and_no_server_topic():
    subs = codec.subscriptions("god")
    device_topics = [t for t, _ in FIXTURES] + [
        f"{BASE}/sensor/batch", f"{BASE}/system/diagnostics", f"{BASE}/zone/ack",
        f"kaiser/god/zone/gh/esp/{ESP}/subzone/a/sensor/4/data", f"kaiser//esp/{ESP}/sensor/4/data",
        f"kaiser//esp/{ESP}/system/heartbeat",
    ]
    for t in device_topics:
        assert any(matches(f, t) for f in subs), t
    for t in [f"{BASE}/system/heartbeat/ack", f"{BASE}/actuator/16/command", f"{BASE}/config",
              f"{BASE}/actuator/emergency", "kaiser/god/server/status", "kaiser/broadcast/emergency",
              f"kaiser/other/esp/{ESP}/system/heartbeat"]:
        assert not any(matches(f, t) for f in subs), t


# --------------------------------------------------------------------------
# encoding


@pytest.mark.parametrize(("typ", "value", "toggle", "command", "wire"), [
    ("relay", 1.0, False, "ON", 1.0), ("relay", 0.0, False, "OFF", 0.0),
    ("pump", 0.7, False, "ON", 1.0), ("pump", 0.3, False, "OFF", 0.0),
    ("valve", 1.0, False, "ON", 1.0), ("valve", 0.0, False, "OFF", 0.0), ("valve", 0.5, False, "PWM", 0.5),
    ("pwm", 0.6, False, "PWM", 0.6), ("pwm", 0.0, False, "OFF", 0.0), ("pwm", 1e-05, False, "OFF", 0.0), ("pwm", 0.12344, False, "PWM", 0.1234),
    ("relay", 0.0, True, "TOGGLE", 0.0),
])
def test_command_per_actuator_type(typ, value, toggle, command, wire):
    out = codec.encode_command("god", ESP, 16, typ, value, 30, toggle=toggle)
    assert out.topic == f"{BASE}/actuator/16/command"
    body = json.loads(out.payload)
    assert (body["command"], body["value"]) == (command, wire)
    assert b"e-" not in out.payload
    assert (out.qos, out.retain) == (1, False)


@pytest.mark.parametrize(("duration", "wire"), [(None, 0), (0, 0), (0.2, 1), (1.0, 1), (59.5, 60), (600, 600)])
def test_command_duration_in_whole_seconds_rounded_up(duration, wire):
    assert json.loads(codec.encode_command("god", ESP, 16, "pump", 1.0, duration).payload)["duration"] == wire


@pytest.mark.parametrize(("args", "words"), [
    (("god", "ESP_bad", 16, "pump", 1.0, None), "esp id"),
    (("god", ESP, 40, "pump", 1.0, None), "gpio"),
    (("god", ESP, 16, "pump", 1.5, None), "0.0-1.0"),
    (("god", ESP, 16, "pump", float("nan"), None), "0.0-1.0"),
    (("god", ESP, 16, "pump", 1.0, -1), "duration"),
    (("god", ESP, 16, "heater", 1.0, None), "actuator type"),
])
def test_impossible_commands_raise_codec_error(args, words):
    with pytest.raises(CodecError, match=words):
        codec.encode_command(*args)


DEVICE = Device(
    "north", ESP, zone="greenhouse",
    sensors=(Sensor("north", "air_temp", 4, "ds18b20"),
             Sensor("north", "climate", 21, "sht31", i2c_address=0x44, subzone="bed_a",
                    quantities=("temperature", "humidity"))),
    actuators=(Actuator("north", "pump", 18, "pump", critical=True),
               Actuator("north", "vent", 25, "pwm", aux_gpio=26, inverted_logic=True, default_state=True)),
)


def test_device_config_items_use_firmware_field_names():
    sensors = [codec.sensor_item(x) for x in DEVICE.sensors]
    actuators = [codec.actuator_item(x) for x in DEVICE.actuators]
    assert sensors[0] == {"gpio": 4, "sensor_type": "ds18b20", "sensor_name": "air_temp", "active": True,
                          "raw_mode": True}
    assert sensors[1]["subzone_id"] == "bed_a" and sensors[1]["i2c_address"] == 0x44
    assert actuators[0] == {"gpio": 18, "actuator_type": "pump", "actuator_name": "pump", "active": True,
                            "critical": True, "inverted_logic": False, "default_state": False, "default_pwm": 0}
    assert actuators[1]["aux_gpio"] == 26 and actuators[1]["default_pwm"] == 255
    # a removal keeps the required fields (boards refuse an item without them)
    assert codec.removal(actuators[0], "actuator") == {"gpio": 18, "actuator_type": "pump", "actuator_name": "pump",
                                                        "active": False}
    out = codec.encode_configs("god", ESP, sensors, actuators, iter(["cfg-1"]))
    (push,) = out
    assert (push.topic, push.qos, push.retain) == (f"{BASE}/config", 1, False)
    body = json.loads(push.payload)
    assert body == {"correlation_id": "cfg-1", "sensors": sensors, "actuators": actuators}


@pytest.mark.parametrize(("generation", "board", "limit"), [
    ("legacy", "esp32dev", 2048), ("legacy", "xiao_esp32c3", 1024), ("current", "esp32dev", 4352),
    ("auto", "xiao_esp32c3", 1024)])
def test_a_large_config_is_split_to_fit_the_board(generation, board, limit):
    sensors = [{"gpio": 4, "sensor_type": "ds18b20", "sensor_name": f"probe_{i:02d}", "active": True,
                "raw_mode": True, "onewire_address": f"28FF641E8D3C0C{i:02X}"} for i in range(20)]
    actuators = [codec.actuator_item(Actuator("x", f"relay_{i}", 16 + i, "relay")) for i in range(6)]
    ids = (f"cfg-{i}" for i in range(1, 100))
    out = codec.encode_configs("god", ESP, sensors, actuators, ids, generation=generation, board=board)
    for o in out:
        packet = 2 + 2 + len(o.topic) + 2 + len(o.payload)  # fixed header, topic length, packet id
        assert (packet if generation != "current" else len(o.payload)) < limit
        assert not o.retain
    bodies = [json.loads(o.payload) for o in out]
    assert [b["correlation_id"] for b in bodies] == [f"cfg-{i}" for i in range(1, len(out) + 1)]
    assert [s for b in bodies for s in b["sensors"]] == sensors
    assert [a for b in bodies for a in b["actuators"]] == actuators
    assert len(out) > 1 or generation == "current"


def test_heartbeat_ack_echoes_the_boards_epoch_and_never_sends_zero():
    out = codec.encode_heartbeat_ack("god", ESP, server_time=1795000010.7, config_available=True, handover_epoch=3)
    assert out.topic == f"{BASE}/system/heartbeat/ack" and not out.retain
    assert out.payload == b'{"status":"online","config_available":true,"server_time":1795000010,"handover_epoch":3}'
    for none in (None, 0, -1, True):
        body = json.loads(codec.encode_heartbeat_ack("god", ESP, server_time=1.0, handover_epoch=none).payload)
        assert body["handover_epoch"] == 1
    with pytest.raises(CodecError):
        codec.encode_heartbeat_ack("god", ESP, server_time=1.0, status="maybe")


def test_server_status_is_retained():
    on = codec.encode_server_status("god", online=True, timestamp=1795000000)
    off = codec.encode_server_status("god", online=False, timestamp=1795000000, reason="graceful_shutdown")
    will = codec.encode_server_status("god", online=False, timestamp=1795000000)
    assert on.topic == "kaiser/god/server/status" and on.retain and off.retain
    assert json.loads(on.payload) == {"status": "online", "timestamp": 1795000000}
    assert json.loads(off.payload)["reason"] == "graceful_shutdown"
    assert json.loads(will.payload)["reason"] == "unexpected_disconnect"


def test_emergencies_carry_only_what_the_firmware_reads():
    b = codec.encode_emergency("flood " * 40, timestamp=1796000000)
    assert b.topic == "kaiser/broadcast/emergency" and not b.retain
    body = json.loads(b.payload)
    assert body["command"] == "stop_all" and body["timestamp"] == "2026-11-30T00:53:20Z"
    assert all(isinstance(v, str) for v in body.values())  # current ignores a stop with a non-string field
    assert len(b.payload) < 200  # legacy parses it in a 256-byte document
    d = codec.encode_device_emergency("god", ESP, "tok", "smoke")
    assert d.topic == f"{BASE}/actuator/emergency"
    assert d.payload == b'{"command":"emergency_stop","auth_token":"tok","reason":"smoke"}'
    c = codec.encode_device_emergency("god", ESP, ESP, clear=True)
    assert c.payload == b'{"command":"clear_emergency","auth_token":"ESP_A1B2C3"}'
    with pytest.raises(CodecError):
        codec.encode_device_emergency("god", ESP, "tök")


def test_legacy_bare_nan_is_that_value_with_quality_bad():
    for word, want in (("nan", math.isnan), ("inf", lambda v: v == math.inf), ("-inf", lambda v: v == -math.inf),
                       ("ovf", lambda v: v == math.inf)):
        m = dec(f"{BASE}/sensor/4/data",
                f'{{"gpio":4,"sensor_type":"ds18b20","raw_value":{word},"processed_value":{word},'
                f'"unit":"C","quality":"good","timestamp":1834567}}')
        assert isinstance(m, SensorData), m
        (v,) = m.values
        assert want(v.value) and v.quality == "bad"
    # inside a string it is text, and JSON's own NaN / 1e999 stay refused
    assert isinstance(dec(f"{BASE}/sensor/4/data", b'{"gpio":4,"sensor_type":"ph","value":7,"note":"nan"}'), SensorData)
    for bad in (b'{"gpio":4,"sensor_type":"ph","value":NaN}', b'{"gpio":4,"sensor_type":"ph","value":1e999}',
                b'{"gpio":4,"sensor_type":"ph","value":nanny}'):
        assert isinstance(dec(f"{BASE}/sensor/4/data", bad), Rejection)


@pytest.mark.parametrize("generation", ["current", "legacy"])
def test_readings_and_heartbeats_round_trip_in_both_generations(generation):
    ts = 1795000000 if generation == "current" else 1834567
    out = codec.encode_reading("god", ESP, 27, "ds18b20", raw=-162, ts=ts, generation=generation, seq=1)
    assert out.retain == (generation == "legacy")  # legacy publishes retained
    m = decode(out.topic, out.payload, retained=out.retain, received_at=NOW)
    assert isinstance(m, SensorData) and m.retained == (generation == "legacy")
    (v,) = m.values
    assert (v.gpio, v.sensor_type, v.raw, v.needs_processing) == (27, "ds18b20", -162.0, True)
    assert v.ts_kind == ("unix_s" if generation == "current" else "uptime")
    assert sensors.process(v.sensor_type, v.raw).value == -10.125
    hb = codec.encode_heartbeat("god", ESP, ts=ts, uptime=77, sensor_count=2, generation=generation)
    h = decode(hb.topic, hb.payload, received_at=NOW)
    assert isinstance(h, Heartbeat) and (h.uptime, h.sensor_count) == (77, 2)


DEVICE_BODIES = {
    "sensor_batch": ({"ts": 1795000000, "sensors": [{"gpio": 4, "sensor_type": "ds18b20", "raw": 344}]}, None, SensorData),
    "diagnostics": ({"heap_free": 1}, None, Diagnostics),
    "will": ({"status": "offline", "reason": "unexpected_disconnect"}, None, Will),
    "actuator_status": ({"state": False, "pwm": 0, "type": "relay"}, 5, ActuatorStatus),
    "actuator_response": ({"command": "OFF", "success": False, "message": "emergency"}, 5, ActuatorResponse),
    "actuator_alert": ({"type": "verification_failed"}, 255, ActuatorAlert),
    "config_response": ({"status": "success", "type": "sensor", "count": 3}, None, ConfigResponse),
    "zone_ack": ({"status": "zone_assigned"}, None, ZoneAck),
}


@pytest.mark.parametrize("kind", sorted(DEVICE_BODIES))
def test_every_device_message_kind_round_trips(kind):
    body, gpio, cls = DEVICE_BODIES[kind]
    out = codec.encode_device("god", ESP, kind, body, gpio=gpio)
    m = decode(out.topic, out.payload, received_at=NOW)
    assert isinstance(m, cls), m


# --------------------------------------------------------------------------
# properties: nothing ever raises

TOPICS = st.one_of(
    st.sampled_from([t for t, _ in FIXTURES] + [f"{BASE}/sensor/batch", f"{BASE}/zone/ack",
                                                 f"{BASE}/system/diagnostics", f"{BASE}/actuator/255/alert",
                                                 f"kaiser/god/zone/z/esp/{ESP}/subzone/s/sensor/4/data"]),
    st.text(max_size=60),
    st.lists(st.sampled_from(["kaiser", "god", "", "esp", ESP, "sensor", "4", "40", "data", "batch",
                              "actuator", "status", "system", "zone", "subzone", "+", "#"]),
             max_size=12).map("/".join),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["gpio", "sensor_type", "raw", "raw_value", "value", "processed_value", "ts",
                        "timestamp", "time_valid", "raw_mode", "quality", "esp_id", "state", "pwm",
                        "success", "type", "status", "sensors", "i2c_address", "onewire_address",
                        "zone_id", "subzone_id", "seq", "uptime", "emergency", "failed_item"]) | st.text(max_size=8)


def _check(m):
    assert isinstance(m, (Rejection, *codec.Message.__args__))  # type: ignore[attr-defined]
    if isinstance(m, SensorData):
        for v in m.values:
            assert math.isfinite(v.ts) and 0 <= v.gpio <= 39
            assert v.raw is None or math.isfinite(v.raw)
            assert v.value is None or math.isfinite(v.value)


@given(topic=TOPICS, payload=st.binary(max_size=300), retained=st.booleans())
def test_random_bytes_never_raise(topic, payload, retained):
    _check(decode(topic, payload, retained=retained, received_at=NOW))


@given(topic=TOPICS, obj=st.dictionaries(KEYS, JSON_VALUES, max_size=8))
def test_random_json_objects_never_raise(topic, obj):
    _check(decode(topic, json.dumps(obj).encode(), received_at=NOW))


def _mutated(i: int, key: str, value: object, drop: bool) -> tuple[str, dict]:
    """Fixture ``i`` with ``key`` dropped or set to ``value``."""
    topic, payload = FIXTURES[i]
    obj = json.loads(payload)
    if drop:
        obj.pop(key, None)
    else:
        obj[key] = value
    return topic, obj


@given(i=st.integers(0, len(FIXTURES) - 1), key=KEYS, value=JSON_VALUES, drop=st.booleans(),
       received_at=st.floats(0, 4e9))
def test_mutated_fixtures_never_raise(i, key, value, drop, received_at):
    topic, obj = _mutated(i, key, value, drop)
    m = decode(topic, json.dumps(obj).encode(), received_at=received_at)
    _check(m)


@given(i=st.integers(0, len(FIXTURES) - 1), cut=st.integers(0, 400), junk=st.binary(max_size=4))
def test_truncated_and_spliced_fixtures_never_raise(i, cut, junk):
    topic, payload = FIXTURES[i]
    _check(decode(topic, payload[:cut] + junk + payload[cut:], received_at=NOW))


@given(i=st.integers(0, len(FIXTURES) - 1), key=KEYS, value=JSON_VALUES, drop=st.booleans(), cut=st.integers(0, 400),
       junk=st.sampled_from([b"", b"nan", b"x", b'"'] + [b", " + w for w in (b"nan", b"-inf", b"ovf", b"1e999")]),
       batch=st.booleans())
def test_sensor_values_finds_exactly_what_decode_finds(i, key, value, drop, cut, junk, batch):
    # the event loop's hot path (the MQTT 5 link) reads sensor messages without decode()
    topic, obj = _mutated(i, key, value, drop)
    if batch:
        topic, obj = f"{BASE}/sensor/batch", {"ts": 1795000000, "sensors": [obj, dict(obj, gpio=5)]}
    body = json.dumps(obj).encode()
    body = body[:cut] + junk + body[cut:]
    m = decode(topic, body, received_at=NOW)
    found = codec.sensor_values(topic, body, received_at=NOW)
    if isinstance(m, SensorData):
        assert repr(found) == repr((m.esp_id, m.values))  # repr: a NaN value equals itself
    else:
        assert found is None


def test_a_broken_receive_time_is_a_rejection_too():
    r = decode(*FIXTURES[0], received_at=float("nan"))
    assert isinstance(r, Rejection) and "received_at" in r.reason


def test_a_heartbeat_with_broken_informational_fields_still_counts():
    # a rejected heartbeat would make a live board look offline
    m = dec(f"{BASE}/system/heartbeat", {"ts": "soon", "uptime": "long", "heap_free": "lots", "wifi_rssi": None})
    assert isinstance(m, Heartbeat)
    assert (m.ts_kind, m.ts, m.uptime, m.heap_free) == ("none", NOW, None, None)


# ---------------------------------------------------------------- the fast JSON path
_json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True)
    # (orjson reads an integer past 64 bits as the nearest double, where json keeps
    # it exact: no board sends one, and a reading's numbers are doubles anyway)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=12)


def _parse_outcome(fn, payload: bytes) -> object:
    try:
        return ("ok", repr(fn(payload)))
    except codec._Bad as exc:
        return ("bad", exc.reason, exc.error)


@given(_json_values, st.booleans())
def test_payloads_read_as_the_plain_json_reader_reads_them(value, ascii_only):
    """orjson reads the hot path's payloads; whatever it reads, or refuses, the result
    (or the reason given) is the standard library reader's, constants and all."""
    text = json.dumps({"v": value, "gpio": 4}, ensure_ascii=ascii_only)
    payload = text.encode("utf-8", "surrogatepass")
    topic = "kaiser/god/esp/ESP_12AB34CD/sensor/4/data"

    def fast(p: bytes) -> object:
        return codec._parse(topic, p, 1.0)[1]

    def slow(p: bytes) -> object:
        d = codec._parse_slowly(p)
        if d.__class__ is not dict:
            raise codec._Bad("not an object", "json")
        return d
    assert _parse_outcome(fast, payload) == _parse_outcome(slow, payload)


@pytest.mark.parametrize("payload", [b'{"v":1e400}', b'{"v":NaN}', b'{"v":nan}', b'{"v":"\\ud800"}',
                                     b"\xff{}", b"[1]", b"{"])
def test_what_the_fast_reader_refuses_is_read_as_before(payload):
    topic = "kaiser/god/esp/ESP_12AB34CD/sensor/4/data"
    try:
        got = ("ok", repr(codec._parse(topic, payload, 1.0)[1]))
    except codec._Bad as exc:
        got = ("bad", exc.error)
    try:
        d = codec._parse_slowly(payload)
        want = ("ok", repr(d)) if d.__class__ is dict else ("bad", "json")
    except codec._Bad as exc:
        want = ("bad", exc.error)
    assert got == want
