"""`kaiser demo`: embedded broker, simulated boards, the example rules, a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine.demo import cmd_demo, raw_reading
from engine.model import Sensor

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_example_greenhouse_and_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(config=str(ROOT / "kaiser.toml"), rules=str(ROOT / "rules"), duration=4.0)
    assert cmd_demo(args) == 0
    out = capsys.readouterr().out
    assert "kaiser demo summary:" in out
    summary = out.split("kaiser demo summary:")[1]
    readings = int(summary.split(" readings")[0].split()[-1])
    assert readings > 20
    assert "commands sent" in summary and "rule runs" in summary


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


@pytest.mark.anyio
async def test_simulate_runs_virtual_boards_against_a_broker(broker_url: str, kaiser_id: str, tmp_path: Path,
                                                              rules_dir: Path) -> None:
    import asyncio
    import json

    import aiomqtt

    from engine.adapters.mqtt import parse_url
    from engine.demo import cmd_simulate

    toml = tmp_path / "kaiser.toml"
    toml.write_text(f'[kaiser]\nid = "{kaiser_id}"\nrules = "{rules_dir}"\n[mqtt]\nurl = "{broker_url}"\n')
    host, port = parse_url(broker_url)
    seen: list[str] = []
    async with aiomqtt.Client(host, port) as c:
        await c.subscribe(f"kaiser/{kaiser_id}/esp/+/#")

        async def listen() -> None:
            async for m in c.messages:
                seen.append(m.topic.value)
                json.loads(m.payload)

        task = asyncio.create_task(listen())
        args = __import__("argparse").Namespace(config=str(toml), rules=None, devices=4, rate=20.0, duration=2.0)
        assert await asyncio.to_thread(cmd_simulate, args) == 0
        await asyncio.sleep(0.2)
        task.cancel()
    # the device map's two boards first, then generic ones; heartbeats and readings from each
    boards = {t.split("/")[3] for t in seen}
    assert {"ESP_00A1B2", "ESP_00C3D4", "ESP_51000002", "ESP_51000003"} <= boards
    assert any(t.endswith("/system/heartbeat") for t in seen) and any("/sensor/" in t for t in seen)
