"""The values of one ``sensor/batch`` message land together before the rules and
the guard look at them (SPEC section 2): an interlock that needs one of them is
not refused because the other came first."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from engine.app import Server

from .conftest import Board, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ESP = "ESP_00BA7C"

DEVICES = f"""
devices:
  bed:
    esp_id: {ESP}
    firmware: current
    sensors:
      soil:  {{gpio: 32, type: moisture, calibration: {{dry: 3200, wet: 1300}}}}
      level: {{gpio: 33, type: moisture, calibration: {{dry: 3200, wet: 1300}}}}
    actuators:
      pump: {{gpio: 18, type: pump}}
safety:
  interlocks:
    - name: pump-needs-water
      actuator: bed.pump
      only_if: {{sensor: bed.level, above: 30}}
rules:
  - name: water-when-dry
    when: {{sensor: bed.soil, below: 20}}
    then:
      - {{actuator: bed.pump, set: on, for: 1m}}
"""


def _raw(percent: float) -> int:
    return round(3200 - percent / 100 * (3200 - 1300))


async def test_a_batch_lands_before_the_rules_and_the_guard_look(
        clean_retained: None, kaiser_id: str, broker_url: str, tmp_path: Path, board: Board) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "devices.yaml").write_text(DEVICES)
    s = Server(make_settings(kaiser_id, broker_url, rules, tmp_path / "k.duckdb"), watch=False, websocket=False)
    await s.start()
    try:
        await board.heartbeat(ESP)
        # the soil value comes first in the batch; the level that allows the pump second
        await board.send(ESP, "sensor/batch", {"esp_id": ESP, "ts": int(time.time()), "sensors": [
            {"gpio": 32, "sensor_type": "moisture", "raw": _raw(10), "quality": "good"},
            {"gpio": 33, "sensor_type": "moisture", "raw": _raw(50), "quality": "good"}]})
        _, cmd = await board.expect(lambda t, p: t.endswith(f"{ESP}/actuator/18/command"))
        assert cmd["command"] == "ON"
        assert s.store is not None
        s.store.flush()
        rows: list[Any] = s.store.query("SELECT outcome, code FROM commands WHERE actuator = 'bed.pump'").rows
        assert rows == [("sent", None)] or all(r[0] == "sent" for r in rows), rows
        readings = s.store.query("SELECT sensor FROM readings ORDER BY sensor").rows
        assert [r[0] for r in readings] == ["bed.level", "bed.soil"]
    finally:
        await s.stop()
        await asyncio.sleep(0)
