"""Twin: the config contract of both generations.

current: main.cpp config branch, config_update_queue.cpp processConfigUpdateQueue,
main.cpp handleSensorConfig / parseAndConfigureSensorWithTracking,
ActuatorManager::handleActuatorConfig / configureActuator, SensorManager::configureSensor.
legacy: main.cpp handleSensorConfig / parseAndConfigureSensor,
ActuatorManager::handleActuatorConfig / configureActuator."""

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
ROM = "28FF641E8D3C0C79"


def topic(tail: str) -> str:
    return f"kaiser/god/esp/{ESP}/{tail}"


def enc(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def board(generation: str, kind: str = "esp32dev"):  # type: ignore[no-untyped-def]
    b = new_board(generation, ESP, board_kind=kind, now=T0)
    b.connect(T0)
    if generation == "current":
        b.receive(topic("system/heartbeat/ack"), ACK, T0)
    return b


def push(b, doc: Any, t: float = 1.0) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    out = b.receive(topic("config"), doc if isinstance(doc, bytes) else enc(doc), T0 + t)
    return [json.loads(o.payload) for o in out if o.topic.endswith("/config_response")]


RELAY = {"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"}
PUMP = {"gpio": 18, "actuator_type": "pump", "actuator_name": "pump"}
PH = {"gpio": 32, "sensor_type": "ph", "sensor_name": "ph"}


# --------------------------------------------------------- correlation_id


def test_current_refuses_the_whole_push_without_correlation_id() -> None:
    b = board("current")
    (resp,) = push(b, {"sensors": [PH], "actuators": [RELAY]})
    assert resp["status"] == "error" and resp["error_code"] == "CONTRACT_MISSING_CORRELATION"
    assert resp["type"] == "system" and resp["correlation_id"].startswith(f"fw_{ESP}_")
    assert b.actuators == {} and b.sensors == {}


def test_current_answers_contract_violation_even_before_registration() -> None:
    """The correlation check comes before admission; config_response passes the gate."""
    b = new_board("current", ESP, now=T0)
    b.connect(T0)
    (resp,) = push(b, {"sensors": [PH]})
    assert resp["error_code"] == "CONTRACT_MISSING_CORRELATION"


@pytest.mark.parametrize("corr", [None, "", 17, ["a"]])
def test_correlation_id_must_be_a_non_empty_string(corr: object) -> None:
    b = board("current")
    doc: dict[str, Any] = {"actuators": [RELAY]}
    if corr is not None:
        doc["correlation_id"] = corr
    (resp,) = push(b, doc)
    assert resp["error_code"] == "CONTRACT_MISSING_CORRELATION"


def test_correlation_id_nested_under_data_counts_and_is_echoed_truncated_to_63_bytes() -> None:
    b = board("current")
    resps = push(b, {"data": {"correlation_id": "c" * 80}, "actuators": [RELAY]})
    assert resps[-1]["correlation_id"] == "c" * 63


def test_legacy_ignores_correlation_id() -> None:
    b = board("legacy")
    resps = push(b, {"sensors": [PH], "actuators": [RELAY]})
    assert [r["status"] for r in resps] == ["success", "success"]
    assert all("correlation_id" not in r for r in resps)


# ------------------------------------------------------------ responses


def test_current_success_responses() -> None:
    b = board("current")
    resps = push(b, {"correlation_id": "c1", "sensors": [PH], "actuators": [RELAY, PUMP]})
    assert resps == [
        {"seq": resps[0]["seq"], "status": "success", "type": "sensor", "count": 1, "failed_count": 0,
         "message": "Configured 1 item(s) successfully", "correlation_id": "c1"},
        {"seq": resps[1]["seq"], "status": "success", "type": "actuator", "count": 2,
         "message": "Configured 2 actuator(s) successfully", "correlation_id": "c1"},
    ]


def test_legacy_success_responses_are_retained_qos_0() -> None:
    b = board("legacy")
    out = b.receive(topic("config"), enc({"sensors": [PH], "actuators": [RELAY]}), T0 + 1)
    cr = [o for o in out if o.topic.endswith("config_response")]
    assert [json.loads(o.payload) for o in cr] == [
        {"status": "success", "type": "sensor", "count": 1, "message": "Configured 1 sensor(s) successfully"},
        {"status": "success", "type": "actuator", "count": 1,
         "message": "Configured 1 actuator(s) successfully"},
    ]
    assert all((o.qos, o.retain) == (0, True) for o in cr)


@pytest.mark.parametrize("missing", ["gpio", "sensor_type", "sensor_name"])
def test_sensor_required_fields(missing: str) -> None:
    item = {k: v for k, v in PH.items() if k != missing}
    b = board("current")
    (resp, *_) = push(b, {"correlation_id": "c", "sensors": [item]})
    assert resp["status"] == "error" and resp["failures"][0]["error"] == "MISSING_FIELD"
    b = board("legacy")
    (resp, _) = push(b, {"sensors": [item], "actuators": [RELAY]})
    assert resp == {"status": "error", "type": "sensor", "count": 0,
                    "message": f"Sensor config missing required field '{missing}'",
                    "error_code": "MISSING_FIELD", "failed_item": item}


@pytest.mark.parametrize("missing", ["gpio", "actuator_type", "actuator_name"])
def test_actuator_required_fields(missing: str) -> None:
    item = {k: v for k, v in RELAY.items() if k != missing}
    for gen in ("legacy", "current"):
        b = board(gen)
        resps = push(b, {"correlation_id": "c", "sensors": [PH], "actuators": [item]})
        err = next(r for r in resps if r["type"] == "actuator")
        assert err["error_code"] == "MISSING_FIELD" and err["failed_item"] == item
        assert b.actuators == {}


def test_wrong_types_are_type_mismatch() -> None:
    b = board("current")
    resps = push(b, {"correlation_id": "c", "actuators": [{**RELAY, "gpio": "5"}]})
    assert resps[0]["error_code"] == "TYPE_MISMATCH"
    resps = push(b, {"correlation_id": "c", "sensors": [{**PH, "sensor_type": 7}]}, 2)
    assert resps[0]["failures"][0]["error"] == "TYPE_MISMATCH"


def test_actuator_type_is_case_sensitive_in_both_generations() -> None:
    """ActuatorManager::createDriver compares exactly: "Relay" has no driver."""
    for gen in ("legacy", "current"):
        b = board(gen)
        resps = push(b, {"correlation_id": "c", "sensors": [PH], "actuators": [{**RELAY, "actuator_type": "Relay"}]})
        assert next(r for r in resps if r["type"] == "actuator")["error_code"] == "UNKNOWN_ERROR"


def test_current_partial_success_lists_failures() -> None:
    b = board("current")
    (resp, *_) = push(b, {"correlation_id": "c", "sensors": [PH, {"gpio": 33, "sensor_type": "ec"}]})
    assert resp["status"] == "partial_success" and resp["count"] == 1 and resp["failed_count"] == 1
    assert resp["failures"] == [{"type": "sensor", "gpio": 33, "error_code": 2011, "error": "MISSING_FIELD",
                                 "detail": "Missing required field 'sensor_name'"}]


def test_failed_item_means_commit_failed_on_current() -> None:
    b = board("current")
    resps = push(b, {"correlation_id": "c", "actuators": [RELAY, {"gpio": 5}]})
    assert resps[-1]["error_code"] == "COMMIT_FAILED" and resps[-1]["correlation_id"] == "c"


# ------------------------------------------------------------ halves


def test_legacy_errors_on_a_missing_or_empty_half_and_applies_the_other() -> None:
    b = board("legacy")
    resps = push(b, {"actuators": [RELAY]})
    assert resps[0] == {"status": "error", "type": "sensor", "count": 0,
                        "message": "Sensor config missing 'sensors' array", "error_code": "MISSING_FIELD"}
    assert resps[1]["status"] == "success" and 5 in b.actuators
    resps = push(b, {"sensors": [PH], "actuators": []}, 2)
    assert resps[1]["message"] == "Actuator config array is empty"


def test_current_accepts_a_missing_or_empty_half() -> None:
    b = board("current")
    resps = push(b, {"correlation_id": "c", "actuators": [RELAY]})
    assert [r["type"] for r in resps] == ["actuator"]
    resps = push(b, {"correlation_id": "d", "sensors": [], "actuators": []}, 2)
    assert [(r["type"], r["status"], r["message"]) for r in resps] == [
        ("sensor", "success", "No sensors configured"), ("actuator", "success", "No actuators configured")]
    assert 5 in b.actuators  # left out = kept


# ------------------------------------------------------------ removal


@pytest.mark.parametrize("gen", ["legacy", "current"])
def test_items_are_never_dropped_by_omission(gen: str) -> None:
    b = board(gen)
    push(b, {"correlation_id": "a", "sensors": [PH], "actuators": [RELAY, PUMP]})
    push(b, {"correlation_id": "b", "sensors": [PH], "actuators": [RELAY]}, 2)
    assert set(b.actuators) == {5, 18}


@pytest.mark.parametrize("gen", ["legacy", "current"])
def test_removal_by_active_false_with_required_fields(gen: str) -> None:
    b = board(gen)
    push(b, {"correlation_id": "a", "sensors": [PH], "actuators": [RELAY, PUMP]})
    push(b, {"correlation_id": "b", "sensors": [PH], "actuators": [{**PUMP, "active": False}]}, 2)
    assert set(b.actuators) == {5}


@pytest.mark.parametrize("gen", ["legacy", "current"])
def test_removal_without_required_fields_is_refused(gen: str) -> None:
    b = board(gen)
    push(b, {"correlation_id": "a", "sensors": [PH], "actuators": [RELAY, PUMP]})
    resps = push(b, {"correlation_id": "b", "sensors": [PH], "actuators": [{"gpio": 18, "active": False}]}, 2)
    assert set(b.actuators) == {5, 18}
    assert next(r for r in resps if r["type"] == "actuator")["error_code"] == "MISSING_FIELD"


def test_sensor_removal_on_current() -> None:
    b = board("current")
    push(b, {"correlation_id": "a", "sensors": [PH]})
    (resp,) = push(b, {"correlation_id": "b", "sensors": [{**PH, "active": False}]}, 2)
    assert resp["status"] == "success" and b.sensors == {}


def test_sensor_removal_on_legacy_reports_a_failed_nvs_write() -> None:
    """SensorManager::removeSensor already deletes the NVS entry; the second
    ConfigManager::removeSensorConfig in parseAndConfigureSensor finds nothing."""
    b = board("legacy")
    push(b, {"sensors": [PH], "actuators": [RELAY]})
    resps = push(b, {"sensors": [{**PH, "active": False}], "actuators": [RELAY]}, 2)
    assert resps[0]["error_code"] == "NVS_WRITE_FAILED" and b.sensors == {}


# ---------------------------------------------------------- ds18b20


def test_current_needs_the_onewire_rom_code_for_a_ds18b20() -> None:
    b = board("current")
    (resp, commit) = push(b, {"correlation_id": "c", "sensors": [{"gpio": 4, "sensor_type": "DS18B20", "sensor_name": "t"}]})
    assert resp["status"] == "error" and resp["failures"][0]["error"] == "CONFIG_FAILED"
    assert commit["error_code"] == "COMMIT_FAILED"
    (resp,) = push(b, {"correlation_id": "d", "sensors": [
        {"gpio": 4, "sensor_type": "DS18B20", "sensor_name": "t", "onewire_address": ROM},
        {"gpio": 4, "sensor_type": "ds18b20", "sensor_name": "u", "onewire_address": "28FF0B2A91160577"}]}, 2)
    assert resp["status"] == "success"
    assert [s.onewire_address for s in b.sensor_list] == [ROM, "28FF0B2A91160577"]
    assert b.sensor_list[0].sensor_type == "ds18b20"  # lower-cased


def test_current_has_a_single_onewire_bus() -> None:
    b = board("current")
    (resp, _) = push(b, {"correlation_id": "c", "sensors": [
        {"gpio": 4, "sensor_type": "ds18b20", "sensor_name": "t", "onewire_address": ROM},
        {"gpio": 27, "sensor_type": "ds18b20", "sensor_name": "u", "onewire_address": "28FF0B2A91160577"}]})
    assert resp["status"] == "partial_success" and resp["failures"][0]["gpio"] == 27


def test_legacy_cannot_configure_a_sensor_on_its_onewire_pin_or_on_34_to_39() -> None:
    """OneWireBusManager::begin reserves GPIO 4 at boot; esp32dev SAFE_GPIO_PINS (legacy)
    has no 34-39; SensorManager::configureSensor needs isPinAvailable."""
    b = board("legacy")
    resps = push(b, {"sensors": [{"gpio": 4, "sensor_type": "ds18b20", "sensor_name": "t"},
                                 {"gpio": 34, "sensor_type": "moisture", "sensor_name": "m"},
                                 {"gpio": 27, "sensor_type": "ds18b20", "sensor_name": "u"}],
                     "actuators": [RELAY]})
    errors = [r["message"] for r in resps if r["status"] == "error"]
    assert errors == ["Failed to configure sensor on GPIO 4", "Failed to configure sensor on GPIO 34"]
    assert set(b.sensors) == {27}


def test_valve_needs_its_enable_pin() -> None:
    """ValveActuator::begin: enable pin = aux_gpio or gpio + 1."""
    b = board("current")
    resps = push(b, {"correlation_id": "c", "actuators": [
        {"gpio": 26, "actuator_type": "valve", "actuator_name": "mist"},
        {"gpio": 27, "actuator_type": "valve", "actuator_name": "drip"},
        {"gpio": 19, "actuator_type": "valve", "actuator_name": "fill"},
        {"gpio": 32, "actuator_type": "valve", "actuator_name": "x", "aux_gpio": 33}]})
    failed = sorted(r["failed_item"]["gpio"] for r in resps if r["status"] == "error" and "failed_item" in r)
    assert failed == [19, 27] and set(b.actuators) == {26, 32}


def test_actuator_on_a_sensor_gpio_or_input_only_pin_fails() -> None:
    b = board("current")
    resps = push(b, {"correlation_id": "c", "sensors": [PH],
                     "actuators": [{**RELAY, "gpio": 32}, {**RELAY, "gpio": 34}]})
    assert sum(r["status"] == "error" and r["type"] == "actuator" for r in resps) == 2


# ------------------------------------------------------------ sensor types


def test_current_knows_bme280_and_soil_moisture_legacy_does_not_map_them() -> None:
    b = board("current")
    push(b, {"correlation_id": "c", "sensors": [{"gpio": 33, "sensor_type": "Soil_Moisture", "sensor_name": "s"}]})
    b.receive(topic("system/heartbeat/ack"), ACK, T0 + 2)
    assert json.loads(b.reading(33, T0 + 3, raw=2000)[0].payload)["sensor_type"] == "moisture"
    lb = board("legacy")
    push(lb, {"sensors": [{"gpio": 33, "sensor_type": "Soil_Moisture", "sensor_name": "s"}], "actuators": [RELAY]})
    # unknown to the legacy registry: echoed as configured, case kept
    assert json.loads(lb.reading(33, T0 + 3, raw=2000)[0].payload)["sensor_type"] == "Soil_Moisture"
    push(lb, {"sensors": [{"gpio": 32, "sensor_type": "PH", "sensor_name": "p"}], "actuators": [RELAY]}, 4)
    assert json.loads(lb.reading(32, T0 + 5, raw=2000)[0].payload)["sensor_type"] == "ph"


def test_legacy_multi_value_chip_answers_both_values() -> None:
    b = board("legacy")
    push(b, {"sensors": [{"gpio": 23, "sensor_type": "sht31_temp", "sensor_name": "c"}], "actuators": [RELAY]})
    assert b.reading(23, T0 + 2, raw=25000, sensor_type="sht31_humidity")
    assert b.reading(23, T0 + 2, raw=25000, sensor_type="co2") == []


# -------------------------------------------------------------- size limits


def big_config(n: int, generation: str) -> dict[str, Any]:
    return {"correlation_id": "c", "sensors": [PH],
            "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "n" * n}]}


def test_legacy_packet_limit_per_board_kind() -> None:
    """PubSubClient drops a packet larger than MQTT_MAX_PACKET_SIZE (2048 / 1024)."""
    for kind, limit in (("esp32dev", 2048), ("xiao_esp32c3", 1024)):
        b = board("legacy", kind)
        topic_len = len(topic("config"))
        fits = 2048 if kind == "esp32dev" else 1024
        for size, accepted in ((fits - 5 - topic_len - 20, True), (fits - topic_len, False)):
            doc = big_config(0, "legacy")
            base = len(enc(doc))
            doc = big_config(size - base, "legacy")
            b2 = board("legacy", kind)
            resps = push(b2, doc)
            assert bool(resps) == accepted, (kind, size)
        assert b.spec.packet_limit == limit


def test_legacy_half_that_does_not_fit_4096_byte_document_is_a_parse_error() -> None:
    """A 2 KB packet of many small numbers needs more than 4096 B of ArduinoJson slots."""
    b = board("legacy")
    doc = {"sensors": [PH], "actuators": [RELAY], "pad": [1] * 600}
    assert len(enc(doc)) < 2000
    resps = push(b, doc)
    assert [r["error_code"] for r in resps] == ["JSON_PARSE_ERROR", "JSON_PARSE_ERROR"]
    assert "NoMemory" in resps[0]["message"]


def test_current_payload_limit_is_4352_bytes() -> None:
    b = board("current")
    base = len(enc(big_config(0, "current")))
    resps = push(b, big_config(4351 - base, "current"))
    assert resps[-1]["status"] == "success"
    resps = push(b, {**big_config(4352 - base, "current"), "correlation_id": "d"}, 2)
    assert resps == [{"seq": resps[0]["seq"], "status": "error", "type": "system", "count": 0,
                      "message": "[CONFIG] Payload too large: 4352 bytes, max=4352",
                      "error_code": "PAYLOAD_TOO_LARGE", "correlation_id": "d"}]


# -------------------------------------------------------------- generation


def test_generation_must_grow() -> None:
    b = board("current")
    assert push(b, {"correlation_id": "a", "generation": 5, "actuators": [RELAY]})[-1]["status"] == "success"
    (resp,) = push(b, {"correlation_id": "b", "generation": 5, "actuators": [PUMP]}, 2)
    assert resp["error_code"] == "STALE_SCOPE" and 18 not in b.actuators
    assert push(b, {"correlation_id": "c", "generation": 6, "actuators": [PUMP]}, 3)[-1]["status"] == "success"
    b.reboot(T0 + 10)  # remembered in NVS
    b.receive(topic("system/heartbeat/ack"), ACK, T0 + 10)
    (resp,) = push(b, {"correlation_id": "d", "generation": 6, "actuators": [RELAY]}, 11)
    assert resp["error_code"] == "STALE_SCOPE"


def test_generation_is_optional_and_a_non_integer_counts_as_none() -> None:
    b = board("current")
    push(b, {"correlation_id": "a", "generation": 5, "actuators": [RELAY]})
    assert push(b, {"correlation_id": "b", "actuators": [PUMP]}, 2)[-1]["status"] == "success"
    assert push(b, {"correlation_id": "c", "generation": 3.5, "actuators": [PUMP]}, 3)[-1]["status"] == "success"


def test_legacy_ignores_generation() -> None:
    b = board("legacy")
    push(b, {"generation": 5, "sensors": [PH], "actuators": [RELAY]})
    resps = push(b, {"generation": 1, "sensors": [PH], "actuators": [PUMP]}, 2)
    assert resps[-1]["status"] == "success"


# ------------------------------------------------------ reconfiguration


def test_current_skips_unchanged_actuators_legacy_recreates_them() -> None:
    for gen, stays_on in (("current", True), ("legacy", False)):
        b = board(gen)
        push(b, {"correlation_id": "a", "sensors": [PH], "actuators": [RELAY]})
        b.receive(topic("actuator/5/command"), b'{"command":"ON"}', T0 + 2)
        assert b.actuators[5].state
        out = b.receive(topic("config"), enc({"correlation_id": "b", "sensors": [PH], "actuators": [RELAY]}), T0 + 3)
        assert b.actuators[5].state is stays_on, gen
        if gen == "current":
            assert not any(o.topic.endswith("/status") for o in out)


def test_json_parse_error_on_current() -> None:
    b = board("current")
    (resp,) = push(b, b'{"correlation_id":"c","actuators":[')
    # the correlation id cannot be read from an unparsable payload
    assert resp["error_code"] == "CONTRACT_MISSING_CORRELATION"


@given(st.dictionaries(st.sampled_from(["gpio", "actuator_type", "actuator_name", "active"]),
                       st.one_of(st.integers(-5, 300), st.text(max_size=6), st.booleans(), st.none(),
                                 st.floats(allow_nan=False, allow_infinity=False))))
def test_any_actuator_item_either_configures_or_answers_an_error(item: dict[str, Any]) -> None:
    b = board("current")
    resps = push(b, {"correlation_id": "c", "actuators": [item]})
    ok = any(r["type"] == "actuator" and r["status"] == "success" for r in resps)
    errors = [r for r in resps if r["status"] == "error"]
    assert ok != bool(errors)
    active = item.get("active", True)
    removed = active is False or (isinstance(active, str) and active.lower() in ("false", "0")) or (
        type(active) is int and active == 0)
    assert bool(b.actuators) == (ok and not removed)


def test_legacy_heartbeat_actuator_count_drifts_down_with_every_re_push() -> None:
    """legacy ActuatorManager::configureActuator: removeActuator() decrements
    actuator_count_, the re-created actuator is not counted again
    (``if (!is_reconfiguration) actuator_count_++``); the heartbeat reports it."""
    b = board("legacy")
    cfg = {"sensors": [PH], "actuators": [RELAY, PUMP]}
    push(b, cfg)
    assert b.actuator_count == 2
    push(b, cfg, 2)
    assert b.actuator_count == 0 and set(b.actuators) == {5, 18}
    hb = [o for o in b.tick(T0 + 61) if o.topic.endswith("/system/heartbeat")]
    assert json.loads(hb[-1].payload)["actuator_count"] == 0
    c = board("current")
    push(c, {"correlation_id": "a", **cfg})
    push(c, {"correlation_id": "b", **cfg}, 2)
    assert c.actuator_count == 2
