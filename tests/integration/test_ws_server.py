"""The server's WebSocket/HTTP port, control messages, reload, broker restart, queries."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from websockets.asyncio.client import connect

from engine import auth
from engine.adapters.broker import EmbeddedBroker
from engine.app import Server
from engine.commands import run_query

from .conftest import RULES, Board, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NORTH, SOUTH = "ESP_00A1B2", "ESP_00C3D4"


async def _next(ws: Any, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            ev = json.loads(await ws.recv())
            if pred(ev):
                return ev


def _http(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def _key(server: Server) -> str:
    """The control key the server wrote beside its store at start."""
    assert server.hub is not None
    token = auth.read_token(auth.token_path(server.settings.store.path, server.hub.port))
    assert token is not None
    return token


async def test_websocket_streams_readings_and_commands_and_takes_control(server: Server, board: Board) -> None:
    assert server.hub is not None
    key = _key(server)
    async with connect(server.hub.url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": f"sensor_data/{NORTH}"}))
        await ws.send(json.dumps({"type": "subscribe", "topic": "actuator_command/+"}))
        await ws.send(json.dumps({"type": "subscribe", "topic": "logic_execution/#"}))
        await _next(ws, lambda e: e["event_type"] == "subscribed" and e["data"]["topic"].startswith("logic"))
        await board.heartbeat(SOUTH)
        await board.reading(NORTH, 4, "ds18b20", 30 * 16)
        ev = await _next(ws, lambda e: e["event_type"] == "sensor_data")
        assert ev["data"]["sensor"] == "north.air_temp" and ev["data"]["value"] == 30.0
        ev = await _next(ws, lambda e: e["event_type"] == "actuator_command")
        assert ev["topic"] == f"actuator_command/{SOUTH}" and ev["data"]["rule"] == "cool-south-when-north-hot"
        # a manual command, guarded like any other
        await ws.send(json.dumps({"type": "command", "actuator": "south.vent", "set": 0.4, "for": "30s",
                                  "token": key, "who": "alice"}))
        ev = await _next(ws, lambda e: e["event_type"] in ("control_result", "error"))
        assert ev["event_type"] == "control_result"
        _, p = await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/25/command"))
        assert p == {"command": "PWM", "value": 0.4, "duration": 0}  # the end of a PWM is the server's OFF
        # emergency stop: broadcast on the wire; then manual ON is refused with the guard's code
        await ws.send(json.dumps({"type": "emergency_stop", "reason": "test", "who": "mallory"}))
        ev = await _next(ws, lambda e: e["event_type"] in ("control_result", "error"))
        assert ev["event_type"] == "error" and "token" in ev["data"]["message"]  # no key, no stop
        await ws.send(json.dumps({"type": "emergency_stop", "reason": "test", "token": key, "who": "alice"}))
        await _next(ws, lambda e: e["event_type"] == "control_result")
        await board.expect(lambda t, p: t == "kaiser/broadcast/emergency")
        await ws.send(json.dumps({"type": "command", "actuator": "south.fan", "set": "on", "token": key}))
        ev = await _next(ws, lambda e: e["event_type"] in ("control_result", "error"))
        assert ev["event_type"] == "error" and "EMERGENCY_STOP_ACTIVE" in ev["data"]["message"]
        await ws.send(json.dumps({"type": "command", "actuator": "south.nothing", "set": "on", "token": key}))
        ev = await _next(ws, lambda e: e["event_type"] in ("control_result", "error"))
        assert ev["event_type"] == "error"
        await ws.send(json.dumps({"type": "command", "actuator": "south.fan", "set": "on", "priority": "x",
                                  "token": key}))
        ev = await _next(ws, lambda e: e["event_type"] in ("control_result", "error"))
        assert ev["event_type"] == "error" and ev["data"]["message"].startswith("refused: priority must be")
        await ws.send(json.dumps({"type": "reset_emergency", "token": key}))
        ev = await _next(ws, lambda e: e["event_type"] in ("control_result", "error"))
        assert ev["event_type"] == "control_result"
    assert server.store is not None
    server.store.flush()
    blocked = server.store.query("SELECT code, source FROM commands WHERE outcome='blocked'").rows
    assert ("EMERGENCY_STOP_ACTIVE", "manual") in blocked
    # the record names the key and the login, never the client's "who" alone
    sent = server.store.query("SELECT reason FROM commands WHERE source = 'manual' AND outcome = 'sent'").rows
    assert sent == [("manual (by local (alice))",)]
    stops = server.store.query("SELECT message FROM events WHERE kind = 'emergency'").rows
    assert any("by local (alice)" in m for (m,) in stops) and all("mallory" not in m for (m,) in stops), stops


async def test_health_metrics_and_read_only_query_while_the_server_writes(server: Server, board: Board) -> None:
    assert server.hub is not None
    base = f"http://127.0.0.1:{server.hub.port}"
    status, body = await asyncio.to_thread(_http, base + "/health")
    health = json.loads(body)
    assert status == 200 and health["mqtt"]["connected"] is True and health["rules_version"] == server.version.id  # type: ignore[union-attr]
    for i in range(50):
        await board.reading(NORTH, 4, "ds18b20", (20 + i % 5) * 16)
    settings = server.settings
    settings = type(settings)(kaiser=settings.kaiser, mqtt=settings.mqtt, store=settings.store,
                              websocket=type(settings.websocket)(listen=f"127.0.0.1:{server.hub.port}"))

    async def count() -> int:
        res = await asyncio.to_thread(run_query, settings, "SELECT count(*) FROM readings")
        return int(res.rows[0][0])

    async with asyncio.timeout(10):
        while await count() < 50:
            await asyncio.sleep(0.05)
    with pytest.raises(Exception, match="read-only"):
        await asyncio.to_thread(run_query, settings, "DELETE FROM readings")
    status, text = await asyncio.to_thread(_http, base + "/metrics")
    assert "kaiser_readings_total" in text and "kaiser_mqtt_connected 1" in text


async def test_reload_only_replaces_the_rules_when_the_new_version_is_clean(server: Server, board: Board,
                                                                            rules_dir: Path) -> None:
    assert server.hub is not None and server.version is not None
    first = server.version.id
    async with connect(server.hub.url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "system"}))
        await _next(ws, lambda e: e["event_type"] == "subscribed")
        (rules_dir / "rules.yaml").write_text(RULES + "\n  - name: broken\n    when: {sensor: north.nope, above: 1}\n"
                                              "    then: [{actuator: south.fan, set: on}]\n")
        assert await server.reload() is False
        ev = await _next(ws, lambda e: e["data"].get("kind") == "reload")
        assert "refused" in ev["data"]["message"] and ev["data"]["data"]["errors"]
        assert server.version.id == first
        (rules_dir / "rules.yaml").write_text(RULES.replace("above: 28", "above: 40"))
        assert await server.reload() is True
        assert server.version.id != first
    await board.heartbeat(SOUTH)
    await board.reading(NORTH, 4, "ds18b20", 30 * 16)  # 30 is no longer hot enough
    await board.reading(NORTH, 4, "ds18b20", 41 * 16)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"))
    assert server.store is not None
    server.store.flush()
    rows = server.store.query("SELECT ok FROM config_versions ORDER BY loaded_at").rows
    assert [r[0] for r in rows] == [True, False, True]


async def test_the_server_rides_out_a_broker_restart(kaiser_id: str, rules_dir: Path, tmp_path: Path) -> None:
    broker = EmbeddedBroker()
    await broker.start()
    settings = make_settings(kaiser_id, broker.url, rules_dir, tmp_path / "k.duckdb")
    server = Server(settings, watch=False, websocket=False)
    await server.start()
    try:
        async with aiomqtt.Client(broker.host, broker.port) as c:
            await c.publish(f"kaiser/{kaiser_id}/esp/{NORTH}/sensor/4/data",
                            json.dumps({"gpio": 4, "sensor_type": "ds18b20", "raw": 320, "raw_mode": True}), qos=1)
        await broker.stop()
        async with asyncio.timeout(10):
            while server.mqtt is not None and server.mqtt.connected:
                await asyncio.sleep(0.05)
        await broker.start()
        assert server.mqtt is not None
        assert await server.mqtt.wait_connected(20)
        async with aiomqtt.Client(broker.host, broker.port) as c:
            await c.subscribe(f"kaiser/{kaiser_id}/esp/{SOUTH}/actuator/+/command", qos=1)
            b = Board(c, kaiser_id)
            await b.heartbeat(SOUTH)
            await b.reading(NORTH, 4, "ds18b20", 30 * 16)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    if m.topic.value.endswith("/actuator/5/command"):
                        break
        assert server.store is not None
        server.store.flush()
        assert server.store.query("SELECT count(*) FROM readings").rows[0][0] == 2  # nothing lost
    finally:
        await server.stop()
        await broker.stop()


async def test_a_file_change_in_the_rules_dir_reloads(settings: Any, rules_dir: Path) -> None:
    server = Server(settings, websocket=False, watch=True)
    await server.start()
    try:
        assert server.version is not None
        first = server.version.id
        await asyncio.sleep(0.3)  # the watcher is up
        (rules_dir / "rules.yaml").write_text(RULES.replace("above: 28", "above: 29"))
        async with asyncio.timeout(15):
            while server.version.id == first:
                await asyncio.sleep(0.05)
    finally:
        await server.stop()


async def test_plan_why_and_history_read_the_store_after_the_server_stopped(
        settings: Any, board: Board, rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from engine.commands import cmd_history, cmd_plan, cmd_why

    server = Server(settings, websocket=False, watch=False)
    await server.start()
    await board.heartbeat(SOUTH)
    for c in (30, 20, 31):
        await board.reading(NORTH, 4, "ds18b20", c * 16)
        await asyncio.sleep(0.1)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"))
    await board.send(SOUTH, "actuator/5/response", {"gpio": 5, "command": "ON", "value": 1.0, "duration": 0,
                                                    "success": True, "message": "Command executed"})
    await asyncio.sleep(0.3)
    await server.stop()
    toml = tmp_path / "kaiser.toml"
    toml.write_text(f'[kaiser]\nid = "{settings.kaiser.id}"\nrules = "{rules_dir}"\n'
                    f'[store]\npath = "{settings.store.path}"\n[websocket]\nlisten = "127.0.0.1:1"\n')
    capsys.readouterr()
    ns = argparse.Namespace(config=str(toml), actuator="south.fan", n=10)
    assert await asyncio.to_thread(cmd_why, ns) == 0
    out = capsys.readouterr().out
    assert "rule cool-south-when-north-hot" in out and "firmware: ON ok" in out and "north.air_temp" in out
    ns = argparse.Namespace(config=str(toml), sensor="north.air_temp", since="1h")
    assert await asyncio.to_thread(cmd_history, ns) == 0
    assert "31.0" in capsys.readouterr().out
    new_rules = tmp_path / "new-rules"
    new_rules.mkdir()
    (new_rules / "devices.yaml").write_text((rules_dir / "devices.yaml").read_text())
    (new_rules / "rules.yaml").write_text(RULES.replace("above: 28", "above: 30.5"))
    ns = argparse.Namespace(config=str(toml), path=str(new_rules), since="1h")
    assert await asyncio.to_thread(cmd_plan, ns) == 0
    out = capsys.readouterr().out
    assert "0 new, 1 gone" in out, out


async def test_estop_and_reset_from_the_cli_go_through_the_running_server(
        server: Server, board: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from engine.commands import cmd_estop, cmd_query, cmd_reset

    assert server.hub is not None
    monkeypatch.delenv("KAISER_WS_TOKEN", raising=False)  # the CLI reads the token file beside the store
    toml = tmp_path / "cli.toml"
    toml.write_text(f'[kaiser]\nid = "{server.kaiser_id}"\n[store]\npath = "{server.settings.store.path}"\n'
                    f'[websocket]\nlisten = "127.0.0.1:{server.hub.port}"\n')
    await board.heartbeat(SOUTH)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/config"))  # first sight

    def configs() -> int:
        return sum(1 for t, _, _ in board.seen if t.endswith(f"{SOUTH}/config"))

    ns = argparse.Namespace(config=str(toml), device="south", reason="smoke in south")
    assert await asyncio.to_thread(cmd_estop, ns) == 0
    _, p = await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/emergency"))
    assert p == {"command": "emergency_stop", "auth_token": SOUTH, "reason": "smoke in south"}
    await board.heartbeat(SOUTH, uptime=200)  # no config while stopped: it would clear a legacy latch
    await asyncio.sleep(0.2)
    assert configs() == 1
    ns = argparse.Namespace(config=str(toml), device="south", reason="all clear")
    assert await asyncio.to_thread(cmd_reset, ns) == 0
    # the reset clears the board's own latch with clear_emergency; nothing is switched on
    _, p = await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/emergency")
                              and p["command"] == "clear_emergency")
    assert p["auth_token"] == SOUTH
    ns = argparse.Namespace(config=str(toml), sql="SELECT kind FROM events WHERE kind = 'emergency'")
    assert await asyncio.to_thread(cmd_query, ns) == 0
    ns = argparse.Namespace(config=str(toml), device="nowhere", reason="x")
    assert await asyncio.to_thread(cmd_estop, ns) == 1  # refused: unknown device
    from engine.commands import _operator

    assert server.store is not None
    server.store.flush()
    who = server.store.query("SELECT DISTINCT data->>'$.who' FROM events WHERE kind = 'emergency'").rows
    assert who == [(f"local ({_operator()})",)]  # the key's name and the CLI's login
    key_file = auth.token_path(server.settings.store.path, server.hub.port)
    good = key_file.read_text()
    key_file.write_text("another-token-0123456789\n")  # a stale or foreign file: refused, clean exit
    ns = argparse.Namespace(config=str(toml), device="south", reason="x")
    assert await asyncio.to_thread(cmd_estop, ns) == 1
    key_file.write_text(good)


async def test_the_query_port_is_keyed_read_only_and_bounded(
        clean_retained: None, kaiser_id: str, broker_url: str, rules_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses
    import logging
    import time
    import urllib.error
    import urllib.parse

    caplog.set_level(logging.INFO)
    settings = make_settings(kaiser_id, broker_url, rules_dir, tmp_path / "kaiser.duckdb")
    settings = dataclasses.replace(settings, websocket=dataclasses.replace(
        settings.websocket, query_timeout=0.5, query_workers=1))
    server = Server(settings, watch=False)
    await server.start()
    try:
        assert server.hub is not None
        key = _key(server)
        base = f"http://127.0.0.1:{server.hub.port}/query?"

        def get(sql: str, token: str | None = key) -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(base + urllib.parse.urlencode({"sql": sql}),
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert (await asyncio.to_thread(get, "SELECT 1", None))[0] == 401
        assert (await asyncio.to_thread(get, "SELECT 1", "p\u00e4ss"))[0] == 401
        assert await asyncio.to_thread(get, "SELECT 1") == (200, {"columns": ["1"], "rows": [[1]],
                                                                  "truncated": False})
        version = server.version
        for sql in ["EXPLAIN ANALYZE DELETE FROM commands", "EXPLAIN ANALYZE UPDATE state SET value = '1'",
                    f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{rules_dir}/x.yaml'",
                    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM glob('/root/*')",
                    f"SELECT * FROM read_text('{tmp_path}/kaiser.token')"]:
            status, body = await asyncio.to_thread(get, sql)
            assert status == 400 and ("read-only" in body["error"] or "not available" in body["error"]), sql
        assert not (rules_dir / "x.yaml").exists() and server.version == version
        # a query that would run for minutes: interrupted at the limit; meanwhile the rest goes on
        forever = "SELECT count(*) FROM range(1000000000000) a"
        t = time.monotonic()
        slow = asyncio.create_task(asyncio.to_thread(get, forever))
        await asyncio.sleep(0.1)
        assert await server.reload() is True  # nothing to wait for
        status, _ = await asyncio.to_thread(_http, f"http://127.0.0.1:{server.hub.port}/health")
        assert status == 200 and time.monotonic() - t < 0.5
        status, body = await slow
        assert status == 503 and "interrupted after 0.5 s" in body["error"]
        # a client that leaves early: its query is interrupted, nothing is logged as an error
        reader, writer = await asyncio.open_connection("127.0.0.1", server.hub.port)
        writer.write(f"GET /query?{urllib.parse.urlencode({'sql': forever})} HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {key}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        assert await reader.read() == b""
    finally:
        t = time.monotonic()
        await server.stop()
        assert time.monotonic() - t < 5
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
