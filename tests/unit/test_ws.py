"""WebSocket/HTTP hub with real websockets clients on a free port."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from engine.adapters.query import QueryBusy, QueryCancelled, QueryRefused, QueryResult, QueryTimeout
from engine.adapters.ws import ControlRefused, Hub, topic_matches, valid_pattern
from engine.auth import Keyring

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


class FakeQueries:
    """Stands in for the QueryPool: ``SELECT 1`` answers, ``sleep`` waits for its
    client to go away, ``boom ...`` raises what it names."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.gone_seen = asyncio.Event()
        self.closed = False

    async def run(self, sql: str, gone: Callable[[], bool] | None = None) -> QueryResult:
        self.seen.append(sql)
        if sql == "sleep":
            assert gone is not None
            while not gone():
                await asyncio.sleep(0.01)
            self.gone_seen.set()
            raise QueryCancelled("the client went away")
        errors: dict[str, Exception] = {"boom refused": QueryRefused("read-only: DELETE"),
                                        "boom busy": QueryBusy("busy"), "boom slow": QueryTimeout("slow"),
                                        "boom bug": ZeroDivisionError("bug")}
        if sql in errors:
            raise errors[sql]
        return QueryResult(["x"], [(1,)])

    async def aclose(self, wait: float = 2.0) -> None:
        self.closed = True


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    controls: list[tuple[dict[str, Any], str]] = []

    async def on_control(msg: dict[str, Any], operator: str) -> dict[str, Any]:
        if msg.get("actuator") == "north.nothing":
            raise ControlRefused("no actuator north.nothing")
        if msg.get("priority") == "crash":
            raise RuntimeError("a bug")
        controls.append((msg, operator))
        return {"ok": True}

    h = Hub(
        "127.0.0.1:0",
        keys=Keyring.of({"shared": "s3cret", "alice": "a" * 32}),
        max_clients=3,
        on_control=on_control,
        health=lambda: {"mqtt": True, "store": "ok"},
        metrics=lambda: "kaiser_readings_total 5\n",
        query=FakeQueries(),
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
    assert [(c["type"], who) for c, who in hub.controls] == [("emergency_stop", "shared")]  # type: ignore[attr-defined]


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
    assert status == 200 and json.loads(body) == {"columns": ["x"], "rows": [[1]], "truncated": False}
    status, _, _ = await asyncio.to_thread(_get, base + "/nope")
    assert status == 404


# ---------------------------------------------------------------------- keys


ODD_TOKENS: list[object] = [None, 123, 1.5, True, [], {"t": "s3cret"}, "", "päss", "s3cret\u00e9",
                            "\ud800", "s3cret\x00", "x" * 60_000, " s3cret", "S3CRET"]


async def test_odd_tokens_are_error_events_and_the_connection_stays(hub: Hub,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with connect(hub.url) as ws:
        for token in ODD_TOKENS:
            await ws.send(json.dumps({"type": "emergency_stop", "reason": "x", "token": token}))
            ev = await _recv(ws)
            assert ev["event_type"] == "error" and ev["data"]["message"] == "refused: missing or wrong token"
            assert "token" not in ev["data"]["request"]  # never echoed
        await ws.send(json.dumps({"type": "ping"}))
        assert (await _recv(ws))["event_type"] == "pong"
    assert hub.controls == []  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.exc_info]


async def test_the_record_names_the_key_and_the_login_never_the_who_alone(hub: Hub) -> None:
    async with connect(hub.url) as ws:
        for token, who in [("s3cret", None), ("a" * 32, "alice"), ("a" * 32, "root\n(forged) [x]"),
                           ("s3cret", 42)]:
            msg: dict[str, Any] = {"type": "reset_emergency", "token": token}
            if who is not None:
                msg["who"] = who
            await ws.send(json.dumps(msg))
            assert (await _recv(ws))["event_type"] == "control_result"
    assert [who for _, who in hub.controls] == [  # type: ignore[attr-defined]
        "shared", "alice", "alice (rootforged x)", "shared"]


async def test_a_control_bug_is_an_error_event(hub: Hub) -> None:
    async with connect(hub.url) as ws:
        await ws.send(json.dumps({"type": "command", "actuator": "a.b", "priority": "crash", "token": "s3cret"}))
        ev = await _recv(ws)
        assert ev["event_type"] == "error" and ev["data"]["message"].startswith("failed")


async def test_a_hub_without_keys_takes_no_control_and_no_query() -> None:
    async def on_control(msg: dict[str, Any], operator: str) -> dict[str, Any]:
        raise AssertionError("never called")

    h = Hub("127.0.0.1:0", on_control=on_control, query=FakeQueries())
    await h.start()
    try:
        async with connect(h.url) as ws:
            await ws.send(json.dumps({"type": "emergency_stop", "token": ""}))
            ev = await _recv(ws)
            assert ev["event_type"] == "error" and "refused" in ev["data"]["message"]
        status, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{h.port}/query?sql=SELECT%201&token=")
        assert status == 401
    finally:
        await h.stop()


async def _raw_http(port: int, head: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


@pytest.mark.parametrize("auth", [
    b"Authorization: Bearer p\xe4ss\r\n",  # not ASCII
    b"Authorization: Bearer \xff\xfe\xfd\r\n",
    "Authorization: Bearer s3crét\r\n".encode(),
    b"Authorization: Bearer " + b"x" * 4000 + b"\r\n",  # huge
    b"Authorization: Bearer 12345\r\n",
    b"Authorization: Basic czNjcmV0\r\n",
    b"Authorization: Bearer s3cret\r\nAuthorization: Bearer s3cret\r\n",  # two
    b"Authorization:\r\n",
])
async def test_odd_authorization_headers_are_401_never_500(hub: Hub, auth: bytes,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    head = b"GET /query?sql=SELECT%201 HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n"
    status, _ = await _raw_http(hub.port, head)
    assert status == 401
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("query", ["token=p%C3%A4ss", "token=%FF%FE", "token=" + "x" * 3000, "token=1e999",
                                   "token=s3cret&token=x", "token=%00"])
async def test_odd_token_parameters_are_401(hub: Hub, query: str) -> None:
    status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{hub.port}/query?sql=SELECT%201&{query}")
    if query == "token=s3cret&token=x":  # the first one counts
        assert status == 200
    else:
        assert status == 401 and json.loads(body) == {"error": "missing or wrong token"}


async def test_query_errors_map_to_http_statuses(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    base = f"http://127.0.0.1:{hub.port}/query?sql="
    got = {}
    for sql in ["boom%20refused", "boom%20busy", "boom%20slow", "boom%20bug", ""]:
        status, _, body = await asyncio.to_thread(_get, base + sql, "a" * 32)
        got[sql] = (status, json.loads(body)["error"])
    assert got == {"boom%20refused": (400, "read-only: DELETE"), "boom%20busy": (503, "busy"),
                   "boom%20slow": (503, "slow"), "boom%20bug": (500, "internal error: ZeroDivisionError"),
                   "": (400, "missing ?sql=")}


async def test_a_query_client_that_leaves_early_cancels_it_and_leaves_no_traceback(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(b"GET /query?sql=sleep HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    queries = hub.query
    assert isinstance(queries, FakeQueries)
    await asyncio.wait_for(queries.gone_seen.wait(), 5)
    await asyncio.sleep(0.3)  # websockets finishes the connection
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # and the port keeps serving
    status, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{hub.port}/health")
    assert status == 200


async def test_stop_closes_the_query_pool(hub: Hub) -> None:
    await hub.stop()
    assert isinstance(hub.query, FakeQueries) and hub.query.closed
