"""WebSocket/HTTP hub with real websockets clients on a free port."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.adapters.ws import ControlRefused, Hub, topic_matches, valid_pattern

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def _get(url: str, token: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    controls: list[dict[str, Any]] = []

    async def on_control(msg: dict[str, Any]) -> dict[str, Any]:
        if msg.get("actuator") == "north.nothing":
            raise ControlRefused("no actuator north.nothing")
        controls.append(msg)
        return {"ok": True}

    h = Hub(
        "127.0.0.1:0",
        token="s3cret",
        max_clients=3,
        on_control=on_control,
        health=lambda: {"mqtt": True, "store": "ok"},
        metrics=lambda: "kaiser_readings_total 5\n",
        query=lambda sql: {"columns": ["x"], "rows": [[1]], "sql": sql},
        queue_size=5,
    )
    h.controls = controls  # type: ignore[attr-defined]
    await h.start()
    yield h
    await h.stop()


def test_mqtt_wildcards() -> None:
    assert topic_matches("sensor_data/+", "sensor_data/ESP_AABBCC")
    assert topic_matches("#", "system")
    assert topic_matches("sensor_data/#", "sensor_data")
    assert not topic_matches("sensor_data/+", "actuator_status/ESP_AABBCC")
    assert not topic_matches("sensor_data/ESP_1", "sensor_data/ESP_2")
    assert valid_pattern("logic_execution/+") and not valid_pattern("nonsense/x")
    assert not valid_pattern("sensor_data/#/x")


async def test_subscribe_filters_and_unsubscribe(hub: Hub) -> None:
    async with connect(hub.url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "sensor_data/+"}))
        assert (await _recv(ws))["event_type"] == "subscribed"
        hub.publish("actuator_status/ESP_1", "actuator_status", {"state": True})
        hub.publish("sensor_data/ESP_1", "sensor_data", {"value": 21.5}, ts=0)
        ev = await _recv(ws)
        assert ev == {"event_type": "sensor_data", "ts": "1970-01-01T00:00:00.000Z",
                      "topic": "sensor_data/ESP_1", "data": {"value": 21.5}}
        await ws.send(json.dumps({"type": "unsubscribe", "topic": "sensor_data/+"}))
        assert (await _recv(ws))["event_type"] == "unsubscribed"
        hub.publish("sensor_data/ESP_1", "sensor_data", {"value": 22})
        await ws.send(json.dumps({"type": "ping"}))
        assert (await _recv(ws))["event_type"] == "pong"  # nothing else came first


async def test_bad_messages_get_errors_and_the_connection_stays(hub: Hub) -> None:
    async with connect(hub.url) as ws:
        for bad in ["{nope", json.dumps([1]), json.dumps({"type": "dance"}),
                    json.dumps({"type": "subscribe", "topic": "weather/#"})]:
            await ws.send(bad)
            assert (await _recv(ws))["event_type"] == "error"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await _recv(ws))["event_type"] == "pong"


async def test_control_needs_the_token_and_refusals_are_errors(hub: Hub) -> None:
    async with connect(hub.url) as ws:
        await ws.send(json.dumps({"type": "emergency_stop", "reason": "smoke"}))
        ev = await _recv(ws)
        assert ev["event_type"] == "error" and "token" in ev["data"]["message"]
        await ws.send(json.dumps({"type": "emergency_stop", "reason": "smoke", "token": "s3cret"}))
        ev = await _recv(ws)
        assert ev["event_type"] == "control_result" and ev["data"]["ok"] is True
        assert "token" not in ev["data"]["request"]
        await ws.send(json.dumps({"type": "command", "actuator": "north.nothing", "set": "on", "token": "s3cret"}))
        ev = await _recv(ws)
        assert ev["event_type"] == "error" and "north.nothing" in ev["data"]["message"]
    assert [c["type"] for c in hub.controls] == ["emergency_stop"]  # type: ignore[attr-defined]


async def test_a_slow_client_is_dropped_and_the_others_keep_getting_events(hub: Hub) -> None:
    async with connect(hub.url) as fast, connect(hub.url, max_queue=1) as slow:
        for ws in (fast, slow):
            await ws.send(json.dumps({"type": "subscribe", "topic": "#"}))
            await _recv(ws)
        # the slow client never reads; flood well past its queue and the socket buffers
        big = {"blob": "x" * 500_000}
        for i in range(100):
            for j in range(3):  # bursts the fast client reads at once
                hub.publish("system", "system", {"i": i * 3 + j, **big})
            for _ in range(3):
                await _recv(fast)
            if hub.slow_dropped:
                break
        assert hub.slow_dropped == 1
        hub.publish("system", "system", {"after": True})
        while (await _recv(fast)).get("data", {}).get("after") is not True:
            pass
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(slow.recv(), 5)
        assert slow.close_code in (1013, 1006)  # 1006 when its socket was too full for the close frame


async def test_idle_clients_are_closed(hub: Hub) -> None:
    hub.idle_timeout = 0.2
    async with connect(hub.url) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1000


async def test_max_clients(hub: Hub) -> None:
    async with connect(hub.url), connect(hub.url), connect(hub.url):
        await asyncio.sleep(0.05)
        with pytest.raises(Exception, match="503"):
            async with connect(hub.url):
                pass


async def test_health_metrics_query_on_the_same_port(hub: Hub) -> None:
    base = f"http://127.0.0.1:{hub.port}"
    status, ctype, body = await asyncio.to_thread(_get, base + "/health")
    assert status == 200 and ctype == "application/json" and json.loads(body)["mqtt"] is True
    status, ctype, body = await asyncio.to_thread(_get, base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "kaiser_readings_total 5" in body
    status, _, body = await asyncio.to_thread(_get, base + "/query?sql=SELECT%201")
    assert status == 401  # the hub has a token: queries need it too
    status, _, body = await asyncio.to_thread(_get, base + "/query?sql=SELECT%201", "s3cret")
    assert status == 200 and json.loads(body)["sql"] == "SELECT 1"
    status, _, _ = await asyncio.to_thread(_get, base + "/nope")
    assert status == 404
