"""`kaiser demo`: embedded broker, simulated boards, the example rules, a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine.demo import cmd_demo, raw_reading
from engine.model import Sensor

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_example_greenhouse_and_prints_a_summary(capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    args = argparse.Namespace(config=str(ROOT / "kaiser.toml"), rules=str(ROOT / "rules"), duration=4.0)
    assert cmd_demo(args) == 0
    # its embedded broker speaks MQTT 3.1.1: aiomqtt from the start, no refused MQTT 5 CONNECT first
    assert not [r.getMessage() for r in caplog.records if "MQTT 5" in r.getMessage()]
    out = capsys.readouterr().out
    assert "kaiser demo summary:" in out
    summary = out.split("kaiser demo summary:")[1]
    readings = int(summary.split(" readings")[0].split()[-1])
    assert readings > 20
    assert "commands sent" in summary and "rule runs" in summary
    # the example runs boards of both generations, and no twin refuses anything of
    # its device map config (kaiser lint's K485/K486 keep the map to what they take)
    header = out.split("kaiser demo:")[1].split("\n")[0]
    assert "current" in header and "legacy" in header
    assert "refused" not in summary, summary


def test_simulated_raw_values_come_back_through_the_sensor_libraries() -> None:
    import sensors

    cases = [
        (Sensor("n", "t", 4, "ds18b20"), None, 23.5),
        (Sensor("n", "c", 21, "sht31", quantities=("temperature", "humidity")), "humidity", 61.0),
        (Sensor("n", "c", 21, "sht31", quantities=("temperature", "humidity")), "temperature", 27.25),
        (Sensor("n", "soil", 34, "moisture", calibration={"dry": 3200, "wet": 1300}), None, 40.0),
        (Sensor("t", "ph", 32, "ph", calibration={"slope": -3.6, "offset": 12.4}), None, 6.1),
    ]
    for sensor, q, value in cases:
        wire, raw, _ = raw_reading(sensor, q, value)
        assert raw is not None
        got = sensors.process(wire, raw, dict(sensor.calibration), quantity=q).value
        assert got == pytest.approx(value, abs=0.1), (sensor, q)


SIM_DEVICES = """
devices:
  north:
    esp_id: ESP_00A1B2
    board: esp32dev
    firmware: current
    sensors:
      air_temp: {gpio: 4, type: DS18B20, onewire_address: "28FF641E8D3C0C79"}
    actuators:
      heater: {gpio: 18, type: relay}
  tank:
    esp_id: ESP_00C3D4
    board: esp32dev
    firmware: legacy
    sensors:
      ph: {gpio: 32, type: ph}
      water_temp: {gpio: 27, type: DS18B20}
    actuators:
      fill: {gpio: 19, type: valve, aux_gpio: 18}
rules:
  - name: heat-while-cool
    while: {sensor: north.air_temp, below: 60}
    hold:
      - {actuator: north.heater, set: on}
"""


@pytest.mark.anyio
async def test_simulate_runs_boards_of_both_generations_against_a_running_server(
        broker_url: str, kaiser_id: str, tmp_path: Path, clean_retained: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What a user of ``kaiser simulate`` sees against a running server: the current
    board registers (heartbeat acked) and answers the command a rule sends it, and
    the readings of both generations' boards land in the store. (A legacy board's
    first heartbeat comes only after 60 s of uptime: its readings are what tells.)"""
    import asyncio

    from engine.app import Server
    from engine.config import load_deployment
    from engine.demo import cmd_simulate

    from .conftest import make_settings

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "devices.yaml").write_text(SIM_DEVICES)
    assert load_deployment(rules)[1] == []
    server = Server(make_settings(kaiser_id, broker_url, rules, tmp_path / "kaiser.duckdb"), watch=False,
                    websocket=False)
    await server.start()
    try:
        toml = tmp_path / "kaiser.toml"
        toml.write_text(f'[kaiser]\nid = "{kaiser_id}"\nrules = "{rules}"\n[mqtt]\nurl = "{broker_url}"\n')
        args = argparse.Namespace(config=str(toml), rules=None, devices=2, rate=10.0, duration=6.0,
                                  firmware="mixed")
        assert await asyncio.to_thread(cmd_simulate, args) == 0
        await asyncio.sleep(0.5)  # the store's flush interval is 0.1 s
        assert server.store is not None

        def rows(sql: str) -> list[tuple[object, ...]]:
            assert server.store is not None
            return server.store.query(sql).rows

        readings = {str(sensor) for (sensor,) in rows("SELECT DISTINCT sensor FROM readings")}
        assert {"north.air_temp", "tank.ph", "tank.water_temp"} <= readings, readings
        online = rows("SELECT subject FROM events WHERE kind = 'device' AND message LIKE '%is online'")
        assert {d for (d,) in online} == {"north", "tank"}
        registered = rows("SELECT subject FROM events WHERE kind = 'device' AND message LIKE '%registered%'")
        assert registered == [("north",)]  # its heartbeat was acked; legacy boards have no registration
        answered = rows("SELECT actuator, command, success FROM command_responses")
        assert ("north.heater", "ON", True) in answered, answered
    finally:
        await server.stop()
    out = capsys.readouterr().out
    answered_lines = [line for line in out.splitlines() if "commands answered" in line]
    assert answered_lines and int(answered_lines[-1].split(",")[1].split()[0]) >= 1
