"""Integration fixtures: a real MQTT broker (Mosquitto on 127.0.0.1:1883 or env
KAISER_TEST_MQTT; the embedded amqtt broker when none answers), real DuckDB files,
a Kaiser server on a free WebSocket port, and a firmware-speaking test board."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from engine.adapters.broker import EmbeddedBroker
from engine.adapters.mqtt import parse_url
from engine.app import Server
from engine.config.settings import (
    KaiserSettings,
    MqttSettings,
    Settings,
    StoreSettings,
    WebsocketSettings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
async def broker_url() -> AsyncIterator[str]:
    """A broker URL: real Mosquitto when it answers, else the embedded broker."""
    url = os.environ.get("KAISER_TEST_MQTT", "mqtt://127.0.0.1:1883")
    if _answers(*parse_url(url)):
        yield url
        return
    async with EmbeddedBroker() as b:
        yield b.url


@pytest.fixture
def kaiser_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


DEVICES = """
devices:
  north:
    esp_id: ESP_00A1B2
    sensors:
      air_temp: {gpio: 4, type: DS18B20, onewire_address: 28FF641E8D3C0C79}
    actuators:
      heater: {gpio: 18, type: relay}
  south:
    esp_id: ESP_00C3D4
    sensors:
      soil: {gpio: 34, type: moisture, calibration: {dry: 3200, wet: 1300}}
    actuators:
      fan: {gpio: 5, type: relay}
      vent: {gpio: 25, type: pwm}
"""

RULES = """
rules:
  - name: cool-south-when-north-hot
    when: {sensor: north.air_temp, above: 28}
    then:
      - {actuator: south.fan, set: on}
  - name: vent-after-a-hot-spell
    when: {sensor: north.air_temp, above: 35, for: 4s}
    then:
      - {actuator: south.vent, set: 0.5}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "devices.yaml").write_text(DEVICES)
    (d / "rules.yaml").write_text(RULES)
    return d


def make_settings(kaiser_id: str, broker_url: str, rules_dir: Path, store: Path) -> Settings:
    return Settings(
        kaiser=KaiserSettings(id=kaiser_id, rules=rules_dir, tz="UTC"),
        mqtt=MqttSettings(url=broker_url, client_id=f"{kaiser_id}-kaiser"),
        store=StoreSettings(path=str(store), flush_interval=0.1),
        websocket=WebsocketSettings(listen="127.0.0.1:0"),
    )


@pytest.fixture
def settings(clean_retained: None, kaiser_id: str, broker_url: str, rules_dir: Path, tmp_path: Path) -> Settings:
    return make_settings(kaiser_id, broker_url, rules_dir, tmp_path / "kaiser.duckdb")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    s = Server(settings, watch=False)
    await s.start()
    yield s
    await s.stop()


class Board:
    """A test-side MQTT client speaking the firmware protocol for any esp id; it
    records every server-to-ESP message."""

    def __init__(self, client: aiomqtt.Client, kaiser_id: str) -> None:
        self.client = client
        self.kaiser_id = kaiser_id
        self.inbox: asyncio.Queue[tuple[str, Any, bool]] = asyncio.Queue()
        self.seen: list[tuple[str, Any, bool]] = []

    async def send(self, esp: str, tail: str, body: dict[str, Any] | bytes, *, qos: int = 1,
                   retain: bool = False) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"kaiser/{self.kaiser_id}/esp/{esp}/{tail}", payload, qos=qos, retain=retain)

    async def reading(self, esp: str, gpio: int, sensor_type: str, raw: float, **extra: Any) -> None:
        body = {"esp_id": esp, "gpio": gpio, "sensor_type": sensor_type, "raw": raw, "value": 0,
                "quality": "good", "ts": int(__import__("time").time()), "time_valid": True, "raw_mode": True}
        body.update(extra)
        await self.send(esp, f"sensor/{gpio}/data", body)

    async def heartbeat(self, esp: str, uptime: int = 100) -> None:
        await self.send(esp, "system/heartbeat", {"esp_id": esp, "ts": 1_795_000_000, "time_valid": True,
                                                  "uptime": uptime, "heap_free": 180000, "wifi_rssi": -60})

    async def expect(self, pred: Callable[[str, Any], bool], timeout: float = 10.0) -> tuple[str, Any]:
        for t, p, _ in self.seen:
            if pred(t, p):
                return t, p
        async with asyncio.timeout(timeout):
            while True:
                t, p, _r = await self.inbox.get()
                if pred(t, p):
                    return t, p


@contextlib.asynccontextmanager
async def listening(c: aiomqtt.Client, kaiser_id: str) -> AsyncIterator[Board]:
    """A Board on the connected client ``c``: every message it receives is kept in
    ``seen`` and queued for ``expect`` (JSON decoded where it is JSON)."""
    b = Board(c, kaiser_id)

    async def pump() -> None:
        async for m in c.messages:
            try:
                p: Any = json.loads(m.payload) if m.payload else None
            except ValueError:
                p = m.payload
            item = (m.topic.value, p, bool(m.retain))
            b.seen.append(item)
            b.inbox.put_nowait(item)

    task = asyncio.create_task(pump())
    try:
        yield b
    finally:
        task.cancel()


@pytest.fixture
async def board(broker_url: str, kaiser_id: str) -> AsyncIterator[Board]:
    host, port = parse_url(broker_url)
    async with aiomqtt.Client(host, port, identifier=f"{kaiser_id}-board") as c:
        await c.subscribe(f"kaiser/{kaiser_id}/#", qos=1)
        await c.subscribe("kaiser/broadcast/#", qos=1)
        async with listening(c, kaiser_id) as b:
            yield b


@pytest.fixture
async def clean_retained(broker_url: str, kaiser_id: str) -> AsyncIterator[None]:
    """Set up first, torn down last: clear the retained server status a test left."""
    yield
    host, port = parse_url(broker_url)
    try:
        async with aiomqtt.Client(host, port) as c:
            await c.publish(f"kaiser/{kaiser_id}/server/status", b"", qos=1, retain=True)
    except aiomqtt.MqttError:
        pass  # the broker-restart test stopped its broker
