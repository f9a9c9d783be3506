"""The ingest reader process (engine/adapters/ingest.py, ``KAISER_INGEST=process``)
against a real Mosquitto: nothing lost, a board's messages in order, retained
messages flagged, QoS 1 redelivered after the reader dies, the server behaving as
with aiomqtt reading. Behaviour only: no timing assertions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from engine import codec
from engine.adapters.ingest import Ingest, Item
from engine.adapters.mqtt import parse_url
from engine.app import Server

from .conftest import Board

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NORTH, SOUTH = "ESP_00A1B2", "ESP_00C3D4"


def _speaks_mqtt5(host: str, port: int) -> bool:
    """Mosquitto does; the embedded amqtt broker (the fallback without one) does not."""
    import mqtt5

    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(mqtt5.ConnectPacket(f"probe-{uuid.uuid4().hex[:8]}", clean_start=True).write())
            s.settimeout(2)
            data = s.recv(256)
            packet, _ = mqtt5.read(memoryview(data))
            ok = isinstance(packet, mqtt5.ConnAckPacket) and packet.reason_code == mqtt5.ConnAckReasonCode.SUCCESS
            s.sendall(mqtt5.DisconnectPacket().write())
            return ok
    except (OSError, IndexError, ValueError):
        return False


@pytest.fixture
def mqtt5_broker(broker_url: str) -> str:
    if not _speaks_mqtt5(*parse_url(broker_url)):
        pytest.skip("the ingest reader speaks MQTT 5: needs Mosquitto (the embedded broker speaks 3.1.1)")
    return broker_url


@pytest.fixture
def process_ingest(mqtt5_broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAISER_INGEST", "process")


def _reading(esp: str, seq: int, value: float = 21.0) -> bytes:
    return json.dumps({"esp_id": esp, "gpio": 4, "sensor_type": "DS18B20", "value": value, "quality": "good",
                       "ts": int(time.time()), "seq": seq}).encode()


class Collector:
    """Takes batches as the server would; ``kill_after`` kills the reader while it
    handles that many items, before the batch is acknowledged."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.ingest: Ingest | None = None
        self.kill_after: int | None = None

    def __call__(self, items: list[Item]) -> None:
        self.items.extend(items)
        if self.kill_after is not None and len(self.items) >= self.kill_after and self.ingest is not None:
            self.kill_after = None
            assert self.ingest.pid is not None
            os.kill(self.ingest.pid, signal.SIGKILL)

    def readings(self) -> list[tuple[str, int, bool]]:
        """(esp, seq, retained) of every decoded reading, in arrival order."""
        return [(it[2], v[10], it[3]) for it in self.items if it[0] == "r" for v in it[4]]


@pytest.fixture
async def reader(mqtt5_broker: str) -> AsyncIterator[tuple[Ingest, Collector, str]]:
    kid = f"t{uuid.uuid4().hex[:10]}"
    got = Collector()
    ing = Ingest(*parse_url(mqtt5_broker), f"{kid}-ingest", codec.subscriptions(kid), got,
                 backoff=(0.1, 0.5))
    got.ingest = ing
    task = asyncio.create_task(ing.run())
    assert await ing.wait_connected(20)
    yield ing, got, kid
    await ing.close()
    task.cancel()


async def _until(pred: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def test_every_reading_arrives_decoded_and_each_board_keeps_its_order(
        reader: tuple[Ingest, Collector, str], mqtt5_broker: str) -> None:
    _ing, got, kid = reader
    boards = [f"ESP_00{i:04X}" for i in range(1, 6)]
    async with aiomqtt.Client(*parse_url(mqtt5_broker)) as c:
        for seq in range(400):
            esp = boards[seq % len(boards)]
            await c.publish(f"kaiser/{kid}/esp/{esp}/sensor/4/data", _reading(esp, seq), qos=seq % 2)
        await c.publish(f"kaiser/{kid}/esp/{boards[0]}/system/heartbeat", b'{"esp_id": "x"}', qos=1)
        await c.publish(f"kaiser/{kid}/esp/{boards[0]}/sensor/4/data", b"not json", qos=1)
    await _until(lambda: len(got.items) >= 402)
    got_readings = got.readings()
    assert sorted(seq for _, seq, _ in got_readings) == list(range(400))
    for esp in boards:
        seqs = [seq for e, seq, _ in got_readings if e == esp]
        assert seqs == sorted(seqs)
    assert not any(retained for *_, retained in got_readings)
    first = next(it for it in got.items if it[0] == "r")
    value = codec.SensorValue._make(first[4][0])
    assert (value.gpio, value.sensor_type, value.value, value.quality) == (4, "ds18b20", 21.0, "good")
    # anything that is no reading, junk included, goes to the server undecoded, in place
    # (kaiser/god/esp/+/session/announce is read for every kaiser id: other tests' traffic)
    mine = [it for it in got.items if it[1].startswith(f"kaiser/{kid}/")]
    others = [it for it in mine if it[0] == "m"]
    assert [it[1].rsplit("/", 2)[-2:] for it in others] == [["system", "heartbeat"], ["4", "data"]]
    assert others[1][2] == b"not json"
    assert mine[-2:] == others


async def test_retained_readings_are_flagged_and_live_ones_are_not(mqtt5_broker: str) -> None:
    kid = f"t{uuid.uuid4().hex[:10]}"
    topic = f"kaiser/{kid}/esp/{NORTH}/sensor/4/data"
    async with aiomqtt.Client(*parse_url(mqtt5_broker)) as c:
        await c.publish(topic, _reading(NORTH, 1), qos=1, retain=True)
    got = Collector()
    ing = Ingest(*parse_url(mqtt5_broker), f"{kid}-ingest", codec.subscriptions(kid), got)
    task = asyncio.create_task(ing.run())
    try:
        assert await ing.wait_connected(20)
        await _until(lambda: len(got.readings()) >= 1)
        async with aiomqtt.Client(*parse_url(mqtt5_broker)) as c:
            await c.publish(topic, _reading(NORTH, 2), qos=1, retain=True)  # live: delivered unflagged
            await c.publish(topic, _reading(NORTH, 3), qos=1)
        await _until(lambda: len(got.readings()) >= 3)
        assert got.readings() == [(NORTH, 1, True), (NORTH, 2, False), (NORTH, 3, False)]
    finally:
        await ing.close()
        task.cancel()
        async with aiomqtt.Client(*parse_url(mqtt5_broker)) as c:
            await c.publish(topic, b"", qos=1, retain=True)


async def test_a_killed_reader_is_restarted_and_loses_no_qos1_reading(
        reader: tuple[Ingest, Collector, str], mqtt5_broker: str) -> None:
    """Killed while the server handles a batch (so before that batch is acknowledged)
    and while boards keep publishing: the next reader gets every message again that
    was not acknowledged; some arrive twice (QoS 1 is at least once), none is lost,
    and a board's readings still come in order after the duplicates."""
    ing, got, kid = reader
    got.kill_after = 50
    async with aiomqtt.Client(*parse_url(mqtt5_broker)) as c:
        for seq in range(300):
            await c.publish(f"kaiser/{kid}/esp/{NORTH}/sensor/4/data", _reading(NORTH, seq), qos=1)
            if seq % 50 == 0:
                await asyncio.sleep(0.05)
    await _until(lambda: {seq for _, seq, _ in got.readings()} >= set(range(300)), timeout=60)
    assert ing.restarts >= 1
    seqs = [seq for _, seq, _ in got.readings()]
    last = seqs[-1]
    assert last == 299
    # after the restart: a contiguous tail in order (the redelivered ones, then the rest)
    restart_at = max(i for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
    assert seqs[restart_at:] == sorted(seqs[restart_at:])


async def test_the_reader_exits_with_the_server_and_its_session_keeps_what_arrives_meanwhile(
        mqtt5_broker: str) -> None:
    kid = f"t{uuid.uuid4().hex[:10]}"
    topic = f"kaiser/{kid}/esp/{NORTH}/sensor/4/data"

    async def start() -> tuple[Ingest, Collector, asyncio.Task[None]]:
        got = Collector()
        ing = Ingest(*parse_url(mqtt5_broker), f"{kid}-ingest", codec.subscriptions(kid), got)
        task = asyncio.create_task(ing.run())
        assert await ing.wait_connected(20)
        return ing, got, task

    ing, _got, task = await start()
    pid = ing.pid
    await ing.close()
    task.cancel()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    async with aiomqtt.Client(*parse_url(mqtt5_broker)) as c:
        for seq in range(20):
            await c.publish(topic, _reading(NORTH, seq), qos=1)
    ing, got, task = await start()
    try:
        await _until(lambda: len(got.readings()) >= 20)
        assert [seq for _, seq, _ in got.readings()] == list(range(20))
    finally:
        await ing.close()
        task.cancel()


# ---------------------------------------------------------------- the server


def ds18b20(celsius: float) -> int:
    return round(celsius * 16)


def _rows(server: Server, sql: str) -> list[tuple[Any, ...]]:
    assert server.store is not None
    server.store.flush()
    return server.store.query(sql).rows


async def test_the_server_reads_through_the_reader_process(
        process_ingest: None, settings: Any, board: Board) -> None:
    s = Server(settings, watch=False, websocket=False)
    await s.start()
    try:
        assert s.ingest is not None and s.health()["mqtt"]["connected"]
        await board.heartbeat(SOUTH)
        await board.expect(lambda t, p: t.endswith(f"{SOUTH}/system/heartbeat/ack"))
        await board.reading(NORTH, 4, "ds18b20", ds18b20(30.0))
        _topic, payload = await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"))
        assert payload == {"command": "ON", "value": 1.0, "duration": 0}
        for c in (20.0, 21.0, 22.0):
            await board.reading(NORTH, 4, "ds18b20", ds18b20(c))
        await board.send(NORTH, "sensor/4/data", b"{broken")
        await _until(lambda: s.metrics.readings >= 4 and s.metrics.malformed >= 1)
        assert _rows(s, "SELECT value FROM readings WHERE sensor = 'north.air_temp' ORDER BY rowid") == [
            (30.0,), (20.0,), (21.0,), (22.0,)]
        assert _rows(s, "SELECT count(*) FROM events WHERE kind = 'malformed'") == [(1,)]
        health = s.health()["mqtt"]["ingest"]
        assert health["connected"] and health["messages"] >= 6
    finally:
        await s.stop()


async def test_qos1_readings_sent_while_the_server_is_down_arrive_through_the_reader(
        process_ingest: None, settings: Any, board: Board) -> None:
    s = Server(settings, watch=False, websocket=False)
    await s.start()
    await board.heartbeat(SOUTH)
    await s.stop()  # the reader's session stays at the broker and queues for it
    await board.heartbeat(SOUTH)
    await board.reading(NORTH, 4, "ds18b20", ds18b20(30.0))
    s2 = Server(settings, watch=False, websocket=False)
    await s2.start()
    try:
        await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"), timeout=15)
        assert _rows(s2, "SELECT value FROM readings WHERE sensor = 'north.air_temp'") == [(30.0,)]
    finally:
        await s2.stop()


async def test_switching_to_the_reader_leaves_no_second_subscription_on_the_old_session(
        mqtt5_broker: str, settings: Any, board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that read through aiomqtt before keeps its persistent session; with the
    reader on, that session's subscriptions are dropped, so nothing is handled twice."""
    s = Server(settings, watch=False, websocket=False)
    await s.start()
    await s.stop()
    monkeypatch.setenv("KAISER_INGEST", "process")
    s2 = Server(settings, watch=False, websocket=False)
    await s2.start()
    try:
        await board.reading(NORTH, 4, "ds18b20", ds18b20(24.0))
        await _until(lambda: s2.metrics.readings >= 1)
        await asyncio.sleep(0.5)
        assert s2.metrics.readings == 1
        assert _rows(s2, "SELECT count(*) FROM readings") == [(1,)]
    finally:
        await s2.stop()


async def test_readings_read_together_land_together_and_each_of_a_sensor_is_its_own_edge(
        server: Server, board: Board) -> None:
    """One read of the reader holding 30, 20, 30 for north and 22 for south's soil:
    both crossings of north's threshold run the rule (a sensor's second reading
    starts a new run), and the rows are stored in arrival order."""
    from engine.adapters.ingest import item

    await board.heartbeat(SOUTH)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/system/heartbeat/ack"))
    kid = server.kaiser_id

    def raw(esp: str, gpio: int, typ: str, value: float) -> Item:
        body = {"esp_id": esp, "gpio": gpio, "sensor_type": typ, "raw": value, "quality": "good",
                "ts": int(time.time()), "raw_mode": True}
        return item(f"kaiser/{kid}/esp/{esp}/sensor/{gpio}/data", json.dumps(body).encode(), False, time.time())

    server.on_ingest([raw(NORTH, 4, "ds18b20", ds18b20(30.0)), raw(SOUTH, 34, "moisture", 2000),
                      raw(NORTH, 4, "ds18b20", ds18b20(20.0)), raw(NORTH, 4, "ds18b20", ds18b20(30.0))])
    assert _rows(server, "SELECT sensor, value FROM readings ORDER BY rowid")[:4:3] == [
        ("north.air_temp", 30.0), ("north.air_temp", 30.0)]
    assert [r[0] for r in _rows(server, "SELECT sensor FROM readings ORDER BY rowid")] == [
        "north.air_temp", "south.soil", "north.air_temp", "north.air_temp"]
    runs = _rows(server, "SELECT count(*) FROM rule_runs WHERE rule = 'cool-south-when-north-hot'")
    assert runs == [(2,)]
