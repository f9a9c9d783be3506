"""The server's MQTT 5 link (engine/adapters/mqtt5link.py) against a real Mosquitto:
order, QoS 1 acknowledged only once handled, retained flags, publishes queued while
the broker is away (stale ones dropped), and the fallback to aiomqtt on a broker
without MQTT 5. Behaviour only: no timing assertions."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from engine.adapters.broker import EmbeddedBroker
from engine.adapters.ingest import Item
from engine.adapters.mqtt import parse_url
from engine.adapters.mqtt5link import Mqtt5Link
from engine.app import Server

from .conftest import make_settings
from .test_ingest import _speaks_mqtt5

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def mqtt5_url(broker_url: str) -> str:
    if not _speaks_mqtt5(*parse_url(broker_url)):
        pytest.skip("needs an MQTT 5 broker (Mosquitto); the embedded one speaks 3.1.1")
    return broker_url


@pytest.fixture
def base() -> str:
    return f"t5/{uuid.uuid4().hex[:10]}"


class Batches:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.calls = 0
        self.on_item: Any = None

    def __call__(self, items: list[Item]) -> None:
        self.calls += 1
        for it in items:
            self.items.append(it)
            if self.on_item is not None:
                self.on_item(it)

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.items) < n:
                await asyncio.sleep(0.01)


@pytest.fixture
async def running() -> AsyncIterator[list[Mqtt5Link]]:
    links: list[Mqtt5Link] = []
    yield links
    for link in links:
        await link.close()


def start(links: list[Mqtt5Link], link: Mqtt5Link) -> asyncio.Task[None]:
    links.append(link)
    return asyncio.create_task(link.run())


async def test_messages_arrive_in_order_with_their_retained_flag(mqtt5_url: str, base: str,
                                                                 running: list[Mqtt5Link]) -> None:
    host, port = parse_url(mqtt5_url)
    async with aiomqtt.Client(host, port) as c:
        await c.publish(f"{base}/kept", b"old", qos=1, retain=True)
        got = Batches()
        link = Mqtt5Link(mqtt5_url, f"t5-{uuid.uuid4().hex[:8]}", [f"{base}/#"], got)
        start(running, link)
        assert await link.wait_connected(10)
        for i in range(300):
            await c.publish(f"{base}/b{i % 3}", json.dumps({"seq": i}).encode(), qos=1)
        await got.wait(301)
        await c.publish(f"{base}/kept", b"", qos=1, retain=True)  # leave no retained message behind
    kept = [it for it in got.items if it[1] == f"{base}/kept" and it[2] == b"old"]
    assert kept and kept[0][3] is True  # replayed on subscribe: retained
    live = [it for it in got.items if it[1] != f"{base}/kept"]
    assert all(it[3] is False for it in live)
    for b in range(3):
        seqs = [json.loads(it[2])["seq"] for it in live if it[1] == f"{base}/b{b}"]
        assert seqs == list(range(b, 300, 3))
    assert got.calls <= len(got.items)


async def test_a_qos1_message_is_not_acknowledged_before_it_was_handled(mqtt5_url: str, base: str,
                                                                        running: list[Mqtt5Link]) -> None:
    """The link dies while handling a message (no PUBACK sent): the broker delivers it
    again to the next link with the same client id."""
    host, port = parse_url(mqtt5_url)
    cid = f"t5-{uuid.uuid4().hex[:8]}"
    first = Batches()
    link = Mqtt5Link(mqtt5_url, cid, [f"{base}/#"], first)
    first.on_item = lambda it: link.abort() if it[2] == b"die" else None
    task = start(running, link)
    assert await link.wait_connected(10)
    async with aiomqtt.Client(host, port) as c:
        await c.publish(f"{base}/x", b"die", qos=1)
        await first.wait(1)
        await asyncio.wait_for(task, 10)  # aborted: no reconnect
        await c.publish(f"{base}/x", b"after", qos=1)
    second = Batches()
    again = Mqtt5Link(mqtt5_url, cid, [f"{base}/#"], second)
    start(running, again)
    await second.wait(2)
    assert [it[2] for it in second.items][:2] == [b"die", b"after"]


async def test_publishes_wait_for_the_broker_and_stale_ones_are_dropped(mqtt5_url: str, base: str,
                                                                        running: list[Mqtt5Link]) -> None:
    host, port = parse_url(mqtt5_url)
    link = Mqtt5Link(mqtt5_url, f"t5-{uuid.uuid4().hex[:8]}", [], Batches(), max_queue_age=0.5)
    async with aiomqtt.Client(host, port) as c:
        await c.subscribe(f"{base}/#", qos=1)
        link.publish((f"{base}/cmd", b"stale ON", 1, False))  # not connected yet: queued
        link.publish((f"{base}/state", b"retained", 1, True))
        await asyncio.sleep(0.8)
        link.publish((f"{base}/cmd", b"fresh OFF", 1, False))
        start(running, link)
        assert await link.wait_connected(10)
        seen: list[bytes] = []
        async with asyncio.timeout(10):
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                seen.append(m.payload)
                if m.payload == b"fresh OFF":
                    break
        await c.publish(f"{base}/state", b"", qos=1, retain=True)
    assert seen == [b"retained", b"fresh OFF"]  # in order; the stale ON never left
    assert link.dropped == 1


async def test_many_commands_of_one_turn_all_arrive(mqtt5_url: str, base: str, running: list[Mqtt5Link]) -> None:
    """More QoS 1 publishes at once than the broker lets be in flight: they wait for
    room and all arrive, in order."""
    host, port = parse_url(mqtt5_url)
    link = Mqtt5Link(mqtt5_url, f"t5-{uuid.uuid4().hex[:8]}", [], Batches())
    start(running, link)
    assert await link.wait_connected(10)
    async with aiomqtt.Client(host, port) as c:
        await c.subscribe(f"{base}/#", qos=1)
        for i in range(600):
            link.publish((f"{base}/cmd", str(i).encode(), 1, False))
        seen: list[int] = []
        async with asyncio.timeout(20):
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                seen.append(int(m.payload))
                if len(seen) == 600:
                    break
    assert seen == list(range(600))
    assert link._receive_max < 600  # the window was exceeded
    async with asyncio.timeout(10):
        while link._inflight:  # every one acknowledged by the broker in the end
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("client", ["auto", "process"])
async def test_a_broker_without_mqtt5_gets_aiomqtt(kaiser_id: str, rules_dir: Path, tmp_path: Path, client: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded broker (amqtt) speaks MQTT 3.1.1 only: the server notices at the
    first CONNECT and reads and publishes through aiomqtt instead (with client
    ``process`` too: its reader process speaks MQTT 5 only, so it is stopped)."""
    monkeypatch.setenv("KAISER_MQTT_CLIENT", client)
    broker = EmbeddedBroker()
    await broker.start()
    settings = make_settings(kaiser_id, broker.url, rules_dir, tmp_path / "k.duckdb")
    server = Server(settings, watch=False, websocket=False)
    try:
        await server.start()
        assert server.mqtt is not None and server.mqtt.connected
        assert server.mqtt_client == "aiomqtt"
        assert server.health()["mqtt"]["client"] == "aiomqtt"  # operators can see it
        assert server.ingest is None
        host, port = parse_url(broker.url)
        async with aiomqtt.Client(host, port) as c:  # read by aiomqtt: a board's heartbeat is answered
            await c.subscribe(f"kaiser/{kaiser_id}/esp/ESP_00A1B2/system/heartbeat/ack", qos=1)
            await c.publish(f"kaiser/{kaiser_id}/esp/ESP_00A1B2/system/heartbeat",
                            json.dumps({"esp_id": "ESP_00A1B2", "uptime": 5, "heap_free": 90000}).encode(), qos=1)
            async with asyncio.timeout(15):
                async for m in c.messages:
                    assert json.loads(bytes(m.payload))["status"]
                    break
    finally:
        await server.stop()
        await broker.stop()


async def test_the_client_can_be_chosen_in_kaiser_toml(mqtt5_url: str, kaiser_id: str, rules_dir: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``[mqtt] client = "aiomqtt"`` is obeyed on a broker that speaks MQTT 5, and the
    environment variable wins over it."""
    monkeypatch.delenv("KAISER_MQTT_CLIENT", raising=False)
    monkeypatch.delenv("KAISER_INGEST", raising=False)
    base = make_settings(kaiser_id, mqtt5_url, rules_dir, tmp_path / "k.duckdb")
    chosen = replace(base, mqtt=replace(base.mqtt, client="aiomqtt"))
    for settings, env, want in ((chosen, None, "aiomqtt"), (chosen, "mqtt5", "mqtt5"), (base, None, "mqtt5")):
        if env is not None:
            monkeypatch.setenv("KAISER_MQTT_CLIENT", env)
        server = Server(settings, watch=False, websocket=False)
        try:
            await server.start()
            assert server.mqtt is not None and server.mqtt.connected
            assert server.health()["mqtt"]["client"] == want
        finally:
            await server.stop()
        monkeypatch.delenv("KAISER_MQTT_CLIENT", raising=False)


def _board_topic(base: str, board: int) -> str:
    # the shape lane_of reads: kaiser/{k}/esp/{esp}/...
    return f"kaiser/{base.replace('/', '-')}/esp/ESP_{board:06X}/actuator/5/command"


async def _collect(c: aiomqtt.Client, n: int, timeout: float = 20) -> list[tuple[str, bytes]]:
    seen: list[tuple[str, bytes]] = []
    async with asyncio.timeout(timeout):
        async for m in c.messages:
            assert isinstance(m.payload, bytes)
            seen.append((str(m.topic), m.payload))
            if len(seen) == n:
                break
    return seen


async def test_lanes_spread_boards_and_keep_each_boards_order(mqtt5_url: str, base: str,
                                                              running: list[Mqtt5Link]) -> None:
    """On a broker with a small receive maximum (Mosquitto: 20) the link opens its
    publish lanes; every board's messages arrive, in the order they were published,
    including those queued before the link first connected; messages for no single
    board stay on the main connection."""
    host, port = parse_url(mqtt5_url)
    k = base.replace("/", "-")
    link = Mqtt5Link(mqtt5_url, f"t5-{uuid.uuid4().hex[:8]}", [], Batches(), lanes=2)
    async with aiomqtt.Client(host, port) as c:
        await c.subscribe(f"kaiser/{k}/#", qos=1)
        await c.subscribe(f"{base}/#", qos=1)
        sent: list[tuple[str, bytes]] = []
        for i in range(60):  # queued: not connected yet
            m = (_board_topic(base, i % 12), f"early {i}".encode())
            sent.append(m)
            link.publish((*m, 1, False))
        start(running, link)
        assert await link.wait_connected(10) and await link.wait_lanes(10)
        assert link.lanes_status() == (2, 2)
        for i in range(600):  # more at once than one connection may have in flight
            m = (_board_topic(base, i % 12), f"{i}".encode()) if i % 50 else (f"{base}/broadcast", f"{i}".encode())
            sent.append(m)
            link.publish((*m, 1, False))
        seen = await _collect(c, len(sent))
    assert sorted(seen) == sorted(sent)
    for topic in {t for t, _ in sent}:
        assert [p for t, p in seen if t == topic] == [p for t, p in sent if t == topic], topic
    lanes = [lane for lane in link._lanes if lane is not None]
    assert all(lane.published > 0 for lane in lanes) and link.published > 0  # all three carried boards
    assert link.published + sum(lane.published for lane in lanes) == len(sent)


async def test_a_lane_that_cannot_connect_is_folded_into_the_main_connection(
        mqtt5_url: str, base: str, running: list[Mqtt5Link], monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that refuses the lanes' connections (a connection limit, an ACL on
    client ids) costs nothing: their boards' messages go on the main connection, none
    lost, each board's in order."""
    from engine.adapters import mqtt5link

    async def refused(self: Mqtt5Link) -> None:
        raise ConnectionError("broker refused the connection: NOT_AUTHORIZED")

    monkeypatch.setattr(mqtt5link._Lane, "_session", refused)
    host, port = parse_url(mqtt5_url)
    link = Mqtt5Link(mqtt5_url, f"t5-{uuid.uuid4().hex[:8]}", [], Batches(), lanes=3)
    async with aiomqtt.Client(host, port) as c:
        await c.subscribe(f"kaiser/{base.replace('/', '-')}/#", qos=1)
        sent = [(_board_topic(base, i % 9), str(i).encode()) for i in range(90)]
        for m in sent[:30]:  # waiting for the lanes when they are refused
            link.publish((*m, 1, False))
        start(running, link)
        assert await link.wait_connected(10) and await link.wait_lanes(10)
        assert link.lanes_status() == (0, 0)
        for m in sent[30:]:
            link.publish((*m, 1, False))
        seen = await _collect(c, len(sent))
    for topic in {t for t, _ in sent}:
        assert [p for t, p in seen if t == topic] == [p for t, p in sent if t == topic], topic
    assert link.published == len(sent)


async def test_the_server_publishes_over_lanes_and_reports_them(mqtt5_url: str, kaiser_id: str, rules_dir: Path,
                                                                tmp_path: Path) -> None:
    """``[mqtt] lanes`` reaches the link; /health and /metrics show the lanes, and
    ``lanes = 0`` keeps one connection."""
    settings = make_settings(kaiser_id, mqtt5_url, rules_dir, tmp_path / "k.duckdb")
    for lanes in (3, 0):
        server = Server(replace(settings, mqtt=replace(settings.mqtt, lanes=lanes)), watch=False, websocket=False)
        try:
            await server.start()
            health = server.health()["mqtt"]
            assert health["connected"] is True
            assert health["lanes"] == {"open": lanes, "connected": lanes}
            from engine.metrics import render
            text = render(server)
            assert "kaiser_mqtt_lanes_down 0" in text and "kaiser_mqtt_connected 1" in text
        finally:
            await server.stop()


async def test_health_counts_the_messages_read_and_the_reads_they_came_in(mqtt5_url: str, kaiser_id: str,
                                                                        rules_dir: Path, tmp_path: Path) -> None:
    """/health ``mqtt.messages`` and ``mqtt.batches``: every message read, and the socket
    reads that carried them (their ratio is the batch size the rules get)."""
    settings = make_settings(kaiser_id, mqtt5_url, rules_dir, tmp_path / "k.duckdb")
    server = Server(settings, watch=False, websocket=False)
    try:
        await server.start()
        before = server.health()["mqtt"]
        async with aiomqtt.Client(*parse_url(mqtt5_url)) as c:
            for i in range(50):
                await c.publish(f"kaiser/{kaiser_id}/esp/ESP_{i:06X}/system/heartbeat",
                                json.dumps({"esp_id": f"ESP_{i:06X}", "uptime": 5}).encode(), qos=1)
        async with asyncio.timeout(10):
            while server.health()["mqtt"]["messages"] - before["messages"] < 50:
                await asyncio.sleep(0.02)
        after = server.health()["mqtt"]
        assert after["messages"] - before["messages"] == 50
        assert 1 <= after["batches"] - before["batches"] <= 50
    finally:
        await server.stop()
