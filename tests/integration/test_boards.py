"""Boards of both firmware generations against ``kaiser run`` over real Mosquitto.

The boards are firmware twins (engine/firmware/): they parse what the server
sends the way the El Trabajante firmware does, each on its own MQTT connection
with its own last will and subscriptions. What a test asserts is the twin's
state: what a real board would have done."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.mqtt import parse_url
from engine.app import Server
from engine.config.settings import Settings
from engine.firmware import Board, new_board
from engine.firmware.mqtt import TwinFleet

from .conftest import make_settings
from .test_ingest import _speaks_mqtt5

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


def _esp() -> str:
    return f"ESP_{random.getrandbits(24):06X}"


DEVICES = """
devices:
  north:
    esp_id: {north}
    firmware: current
    sensors:
      air_temp: {{gpio: 14, type: DS18B20, onewire_address: 28FF641E8D3C0C79}}
    actuators:
      heater: {{gpio: 18, type: relay}}
  south:
    esp_id: {south}
    firmware: legacy
    sensors:
      soil: {{gpio: 32, type: moisture}}
    actuators:
      fan: {{gpio: 5, type: relay}}
      vent: {{gpio: 25, type: pwm}}
"""

RULES = """
rules:
  - name: cool-south-when-north-hot
    when: {sensor: north.air_temp, above: 28}
    then:
      - {actuator: south.fan, set: on}
  - name: heat-north-when-south-dry
    when: {sensor: south.soil, below: 20}
    then:
      - {actuator: north.heater, set: on, for: 1m}
"""


class Greenhouse:
    """A server, a current board (north) and a legacy board (south) on one broker."""

    def __init__(self, settings: Settings, rules_dir: Path, north: str, south: str) -> None:
        self.settings = settings
        self.rules_dir = rules_dir
        self.north_id, self.south_id = north, south
        self.t = time.time()  # the boards' virtual clock (the server keeps its own)
        self.fleet: TwinFleet | None = None
        self.server: Server | None = None
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def north(self) -> Board:
        assert self.fleet is not None
        return self.fleet.boards[self.north_id]

    @property
    def south(self) -> Board:
        assert self.fleet is not None
        return self.fleet.boards[self.south_id]

    async def start_server(self) -> Server:
        self.server = Server(self.settings, watch=False, websocket=False)
        await self.server.start()
        return self.server

    async def start_boards(self) -> None:
        """Both boards on the broker, on virtual time (``advance``)."""
        k = self.settings.kaiser.id
        boards = [new_board("current", self.north_id, kaiser_id=k, now=self.t),
                  new_board("legacy", self.south_id, kaiser_id=k, now=self.t)]
        self.fleet = TwinFleet(boards, self.settings.mqtt.url, auto_tick=False, now=lambda: self.t)
        self.task = asyncio.create_task(self.fleet.run(self.stop))
        await until(lambda: self.fleet is not None and len(self.fleet._clients) == 2)

    async def advance(self, seconds: float, step: float = 5.0) -> None:
        """Let the boards' time pass (heartbeats, timers), giving the server a moment
        to answer after each step."""
        assert self.fleet is not None
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + step)
            await self.fleet.advance(self.t)
            await asyncio.sleep(0.05)

    async def register(self) -> None:
        """Until both boards are registered and configured (legacy heartbeats a minute after boot)."""
        await self.advance_until(lambda: _registered(self), seconds=150)

    async def advance_until(self, pred: Callable[[], Any], *, seconds: float, step: float = 5.0,
                            patience: float = 60.0) -> None:
        """Let at most ``seconds`` of the boards' time pass, a step at a time, until
        ``pred``; each step waits for the server's answers (up to ``patience`` real
        seconds in all: a loaded machine answers late, virtual time must not run ahead)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        budget = self.t + seconds
        while not pred() and loop.time() < deadline:
            if self.t < budget:
                await self.advance(step)
            settle = loop.time() + 0.25
            while not pred() and loop.time() < min(settle, deadline):
                await asyncio.sleep(0.05)
        assert pred()

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 10)
        if self.server is not None:
            await self.server.stop()

    async def reading(self, board: Board, gpio: int, raw: float) -> None:
        assert self.fleet is not None
        await self.fleet.emit(board, board.reading(gpio, self.t, raw=raw))


async def until(pred: Callable[[], Any], timeout: float = 45.0, what: str = "") -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


def _registered(g: Greenhouse) -> bool:
    return g.north.registered and bool(g.south.actuators) and bool(g.north.actuators) \
        and all(a.active for a in g.south.actuators.values())


@pytest.fixture
async def house(clean_retained: None, kaiser_id: str, broker_url: str, tmp_path: Path) -> AsyncIterator[Greenhouse]:
    north, south = _esp(), _esp()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "devices.yaml").write_text(DEVICES.format(north=north, south=south))
    (rules / "rules.yaml").write_text(RULES)
    settings = make_settings(kaiser_id, broker_url, rules, tmp_path / "kaiser.duckdb")
    g = Greenhouse(settings, rules, north, south)
    try:
        yield g
    finally:
        await g.close()


async def test_both_generations_register_send_data_and_execute_a_rules_command(house: Greenhouse) -> None:
    await house.start_server()
    await house.start_boards()
    await house.register()
    assert house.north.refusals == [] and house.south.refusals == []
    # a current board sends data only once registered; this reading crosses boards
    await house.reading(house.north, 14, 30 * 16)
    await until(lambda: house.south.actuators[5].state)
    # and the other way round: a legacy reading switches the current board's relay
    await house.reading(house.south, 32, 3195)  # nearly dry: ~0 %
    await until(lambda: house.north.actuators[18].state)
    assert house.north.refusals == [] and house.south.refusals == []


async def test_with_the_reader_process_both_generations_take_every_message(
        house: Greenhouse, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KAISER_MQTT_CLIENT=process``: the reader process reads, the server's MQTT 5
    link only publishes. Acks, configs, rule commands, the stop and its reset reach
    both twins and none is refused."""
    if not _speaks_mqtt5(*parse_url(broker_url)):
        pytest.skip("the reader process speaks MQTT 5: needs Mosquitto")
    monkeypatch.setenv("KAISER_MQTT_CLIENT", "process")
    server = await house.start_server()
    assert server.health()["mqtt"]["client"] == "process" and server.ingest is not None
    await house.start_boards()
    await house.register()
    await house.reading(house.north, 14, 30 * 16)
    await until(lambda: house.south.actuators[5].state)
    assert house.north.refusals == [] and house.south.refusals == []
    await server._control({"type": "emergency_stop", "reason": "smoke", "who": "test"})
    await until(lambda: house.north.latched and house.south.latched)
    assert not any(a.state for a in house.south.actuators.values())
    await server._control({"type": "reset_emergency", "reason": "checked", "who": "test"})
    await house.advance(6, step=1)
    await until(lambda: not house.north.latched and not house.south.latched)
    # (a latched board refuses every command, the guard's OFFs too, as in the test below)
    assert [r for b in (house.north, house.south) for r in b.refusals if r[0] != "command"] == []


async def test_an_emergency_stop_latches_both_and_a_reset_clears_them_turning_nothing_on(house: Greenhouse) -> None:
    server = await house.start_server()
    await house.start_boards()
    await house.register()
    await house.reading(house.north, 14, 30 * 16)
    await until(lambda: house.south.actuators[5].state)
    await server._control({"type": "emergency_stop", "reason": "smoke", "who": "test"})
    await until(lambda: house.north.latched and house.south.latched)
    assert not any(a.state for a in house.south.actuators.values())
    await server._control({"type": "reset_emergency", "reason": "checked", "who": "test"})
    await house.advance(6, step=1)  # current refuses a clear within 5 s of the stop; the server waits too
    await until(lambda: not house.north.latched and not house.south.latched)
    await asyncio.sleep(0.5)
    assert not any(a.state for b in (house.north, house.south) for a in b.actuators.values())
    assert [r for b in (house.north, house.south) for r in b.refusals if r[0] == "emergency"] == []


async def test_a_removal_reaches_the_board(house: Greenhouse) -> None:
    server = await house.start_server()
    await house.start_boards()
    await house.register()
    devices = house.rules_dir / "devices.yaml"
    devices.write_text(devices.read_text().replace("      vent: {gpio: 25, type: pwm}\n", ""))
    assert await server.reload()
    await until(lambda: not house.south.actuators[25].active if 25 in house.south.actuators else True)
    assert house.south.actuators[5].active
    assert house.south.refusals == []


async def test_a_board_that_reboots_during_a_stop_gets_the_stop_again(house: Greenhouse) -> None:
    server = await house.start_server()
    await house.start_boards()
    await house.register()
    await server._control({"type": "emergency_stop", "device": "north", "reason": "smoke", "who": "test"})
    await until(lambda: house.north.latched)
    assert house.fleet is not None
    await house.fleet.reboot(house.north_id)  # a reboot clears the board's own latch
    await house.advance_until(lambda: house.north.latched, seconds=60)


async def test_a_server_restart_keeps_the_boards_registered(house: Greenhouse) -> None:
    await house.start_server()
    await house.start_boards()
    await house.register()
    assert house.server is not None
    await house.server.stop()  # a clean stop publishes offline: current boards go safe
    await until(lambda: house.north.safe_state)
    await house.advance(60)  # long enough to go offline for real (30 s grace)
    await house.start_server()
    await house.advance_until(lambda: house.north.registered and not house.north.safe_state, seconds=100)
    assert house.north.epoch >= 1  # it counted the handover; the new server echoed its number
    assert [r for r in house.north.refusals if r[0] == "ack"] == []
    await house.reading(house.north, 14, 30 * 16)
    await until(lambda: house.south.actuators[5].state)


async def test_a_kaiser_that_dies_leaves_current_boards_safe_within_120_s(house: Greenhouse) -> None:
    await house.start_server()
    await house.start_boards()
    await house.register()
    assert house.server is not None
    await house.server._control({"type": "command", "actuator": "north.heater", "set": "on", "who": "test"})
    await until(lambda: house.north.actuators[18].state)
    # the server vanishes without a word (no offline, and no will reaches the board)
    house.server.mqtt = None  # nothing more is published by it
    await house.server.stop()
    house.server = None
    start = house.t
    while not house.north.safe_state and house.t - start <= 130:
        await house.advance(5)
    assert house.north.safe_state and house.t - start <= 125
    assert not any(a.state for a in house.north.actuators.values())
