"""Operating Kaiser (issue 12) against a real server, broker and DuckDB file:
labelled /metrics, log lines, one version id, the REST views checked against their
OpenAPI document, POST emergency stop and reset with a key, the status page."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine import auth
from engine.adapters.rest import openapi
from engine.app import Server

from .conftest import RULES, Board

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NORTH, SOUTH = "ESP_00A1B2", "ESP_00C3D4"


def _http(url: str, method: str = "GET", body: object = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw, ctype, status = r.read(), r.headers.get("Content-Type", ""), r.status
    except urllib.error.HTTPError as e:
        raw, ctype, status = e.read(), e.headers.get("Content-Type", ""), e.code
    return status, json.loads(raw) if ctype.startswith("application/json") else raw.decode()


async def get(server: Server, path: str, **kw: Any) -> tuple[int, Any]:
    assert server.hub is not None
    return await asyncio.to_thread(_http, f"http://127.0.0.1:{server.hub.port}{path}", **kw)


def _key(server: Server) -> str:
    assert server.hub is not None
    token = auth.read_token(auth.token_path(server.settings.store.path, server.hub.port))
    assert token is not None
    return token


class Validator:
    """Responses checked against the OpenAPI document the server serves (its schemas
    are JSON Schema 2020-12, OpenAPI 3.1)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def check(self, path: str, method: str, status: int, body: object) -> None:
        op = self.doc["paths"][path][method]
        assert str(status) in op["responses"], f"{method} {path}: {status} is not documented"
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        wrapped = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
                   "components": self.doc["components"]}
        jsonschema.validate(body, wrapped, cls=jsonschema.Draft202012Validator,
                            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


async def _activity(server: Server, board: Board) -> None:
    """A board online, a hot reading that makes a rule switch the fan."""
    await board.heartbeat(SOUTH)
    await board.heartbeat(NORTH)
    await board.reading(NORTH, 4, "ds18b20", 30 * 16)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"))


async def test_rest_views_answer_as_their_openapi_document_says(server: Server, board: Board) -> None:
    status, doc = await get(server, "/api/v1/openapi.json")
    assert status == 200 and doc == json.loads(json.dumps(openapi()))
    try:
        from openapi_spec_validator import validate
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.skip("openapi-spec-validator not installed")
    validate(doc)
    v = Validator(doc)
    await _activity(server, board)

    status, body = await get(server, "/api/v1/devices")
    v.check("/api/v1/devices", "get", status, body)
    south = next(d for d in body["devices"] if d["name"] == "south")
    assert south["online"] is True and south["last_seen"] and south["esp_id"] == SOUTH

    status, body = await get(server, "/api/v1/devices/north")
    v.check("/api/v1/devices/{name}", "get", status, body)
    assert body["sensor_values"][0]["value"] == 30.0
    status, body = await get(server, "/api/v1/devices/nrth")
    v.check("/api/v1/devices/{name}", "get", status, body)
    assert status == 404 and "did you mean north" in body["error"]

    status, body = await get(server, "/api/v1/sensors")
    v.check("/api/v1/sensors", "get", status, body)
    temp = next(s for s in body["sensors"] if s["ref"] == "north.air_temp")
    assert temp["value"] == 30.0 and temp["unit"] == "°C" and temp["quality"] and temp["age_s"] >= 0

    status, body = await get(server, "/api/v1/actuators")
    v.check("/api/v1/actuators", "get", status, body)
    fan = next(a for a in body["actuators"] if a["ref"] == "south.fan")
    assert fan["commanded"] == 1.0 and fan["holder"]["source"] == "cool-south-when-north-hot"
    assert fan["latched"] is False

    status, body = await get(server, "/api/v1/rules")
    v.check("/api/v1/rules", "get", status, body)
    rule = next(r for r in body["rules"] if r["name"] == "cool-south-when-north-hot")
    assert rule["enabled"] and rule["runs"] >= 1 and rule["last_run"]["outcome"] == "ran"

    for path, query in (("/api/v1/history", "?sensor=north.air_temp&since=1h"),
                        ("/api/v1/history", "?since=1h&bucket=1m"),
                        ("/api/v1/commands", "?actuator=south.fan&since=10m"),
                        ("/api/v1/events", "?since=10m"),
                        ("/api/v1/events", "?since=10m&kind=device"),
                        ("/api/v1/health", "")):
        status, body = await get(server, path + query)
        assert status == 200, (path, body)
        v.check(path, "get", status, body)
    status, body = await get(server, "/api/v1/history?sensor=north.air_temp&since=1h")
    assert [r["value"] for r in body["readings"]] == [30.0]
    status, body = await get(server, "/api/v1/commands?actuator=south.fan")
    assert body["commands"][0]["rule"] == "cool-south-when-north-hot"
    assert body["commands"][0]["config_version"] == server.version.id  # type: ignore[union-attr]
    status, body = await get(server, "/api/v1/history?sensor=north.air_tmp")
    v.check("/api/v1/history", "get", status, body)
    assert status == 404 and "did you mean north.air_temp" in body["error"]
    status, body = await get(server, "/api/v1/history?since=yesterday-ish")
    v.check("/api/v1/history", "get", status, body)
    assert status == 400
    # rules are never written through HTTP
    status, body = await get(server, "/api/v1/rules", method="POST", body={"name": "x"}, token=_key(server))
    assert status == 405


async def test_post_emergency_stop_and_reset_need_a_key(server: Server, board: Board) -> None:
    status, doc = await get(server, "/api/v1/openapi.json")
    v = Validator(doc)
    await board.heartbeat(SOUTH)
    status, body = await get(server, "/api/v1/emergency_stop", method="POST", body={"reason": "smoke"})
    v.check("/api/v1/emergency_stop", "post", status, body)
    assert status == 401 and not server.kaiser.guard.latches()
    status, body = await get(server, "/api/v1/emergency_stop", method="POST", body={"reason": "smoke"},
                             token="not-the-key-0123456789")
    assert status == 401
    key = _key(server)
    status, body = await get(server, "/api/v1/emergency_stop", method="POST",
                             body={"device": "sotuh", "reason": "smoke"}, token=key)
    v.check("/api/v1/emergency_stop", "post", status, body)
    assert status == 404 and "did you mean south" in body["error"]
    status, body = await get(server, "/api/v1/emergency_stop", method="POST", body={}, token=key)
    assert status == 400
    status, body = await get(server, "/api/v1/emergency_stop", method="POST",
                             body={"reason": "smoke in south", "who": "alice"}, token=key)
    v.check("/api/v1/emergency_stop", "post", status, body)
    assert status == 200 and body["target"] == "all" and body["operator"] == "local (alice)"
    await board.expect(lambda t, p: t == "kaiser/broadcast/emergency")
    status, text = await get(server, "/metrics")
    assert 'kaiser_emergency_stop_active{scope="all"} 1' in text
    status, body = await get(server, "/api/v1/actuators")
    assert all(a["latched"] for a in body["actuators"])
    status, body = await get(server, "/api/v1/reset", method="POST", body={"reason": "all clear"}, token=key)
    v.check("/api/v1/reset", "post", status, body)
    assert status == 200 and not server.kaiser.guard.latches()
    status, text = await get(server, "/metrics")
    assert 'kaiser_emergency_stop_active{scope="all"} 0' in text


async def test_metrics_are_labelled_and_parse(server: Server, board: Board) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    await _activity(server, board)
    key = _key(server)
    await get(server, "/api/v1/emergency_stop", method="POST", body={"reason": "t"}, token=key)
    from engine.adapters.ws import ControlRefused

    with pytest.raises(ControlRefused, match="EMERGENCY_STOP_ACTIVE"):
        await server._control({"type": "command", "actuator": "south.fan", "set": "on"}, "test")
    status, text = await get(server, "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(name: str) -> list[Any]:
        fam = families[name]
        return list(fam.samples)

    online = {s.labels["device"]: s.value for s in samples("kaiser_device_online")}
    assert online == {"north": 1.0, "south": 1.0}
    sent = [s for s in samples("kaiser_commands") if s.name == "kaiser_commands_total"]
    assert any(s.labels == {"actuator": "south.fan", "outcome": "sent", "code": ""} and s.value >= 1 for s in sent)
    assert any(s.labels == {"actuator": "south.fan", "outcome": "blocked", "code": "EMERGENCY_STOP_ACTIVE"}
               for s in sent)
    runs = [s for s in samples("kaiser_rule_runs") if s.name == "kaiser_rule_runs_total"]
    assert any(s.labels == {"rule": "cool-south-when-north-hot", "outcome": "ran"} for s in runs)
    values = {s.labels["sensor"]: (s.labels["unit"], s.value) for s in samples("kaiser_sensor_value")}
    assert values["north.air_temp"] == ("°C", 30.0)
    good = [s for s in samples("kaiser_sensor_quality") if s.value == 1]
    assert [s.labels["sensor"] for s in good] == ["north.air_temp"]
    assert {s.labels["scope"]: s.value for s in samples("kaiser_emergency_stop_active")}["all"] == 1
    assert samples("kaiser_config_reload_success")[0].value == 1
    info = samples("kaiser_config_version_info")[0]
    assert info.labels["version"] == server.version.id  # type: ignore[union-attr]
    lat = {s.name: s.value for s in samples("kaiser_reading_to_command_seconds")}
    assert lat["kaiser_reading_to_command_seconds_count"] >= 1
    ingest = {s.name: s.value for s in samples("kaiser_ingest_seconds")}
    assert ingest["kaiser_ingest_seconds_count"] >= 3
    # the unlabelled totals other tools read are still there
    assert "kaiser_readings_total 1" in text and "kaiser_mqtt_connected 1" in text


async def test_one_version_id_and_the_log_tells(server: Server, board: Board, rules_dir: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert server.version is not None and server.store is not None
    await _activity(server, board)
    # a refused reload, then the fix: "rules OK again" and /health says which
    (rules_dir / "rules.yaml").write_text(RULES + "\n  - name: broken\n    when: {sensor: north.nope, above: 1}\n"
                                          "    then: [{actuator: south.fan, set: on}]\n")
    assert await server.reload() is False
    _, health = await get(server, "/health")
    assert health["reload_ok"] is False and health["last_reload"]["errors"]
    assert (await get(server, "/metrics"))[1].count("kaiser_config_reload_success 0") == 1
    (rules_dir / "rules.yaml").write_text(RULES.replace("above: 28", "above: 29"))
    assert await server.reload() is True
    _, health = await get(server, "/health")
    assert health["reload_ok"] is True and health["rules_version"] == server.version.id
    assert any("rules OK again" in r.getMessage() and server.version.id in r.getMessage() for r in caplog.records)
    await board.reading(NORTH, 4, "ds18b20", 20 * 16)
    await board.reading(NORTH, 4, "ds18b20", 31 * 16)
    await board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command") and p.get("command") == "ON")
    await asyncio.sleep(0.3)
    server.store.flush()
    q = server.store.query
    versions = {r[0] for r in q("SELECT version FROM config_versions WHERE ok").rows}
    runs = {r[0] for r in q("SELECT DISTINCT config_version FROM rule_runs").rows}
    cmds = {r[0] for r in q("SELECT DISTINCT config_version FROM commands").rows}
    assert runs and runs <= versions and cmds <= versions, (runs, cmds, versions)
    assert server.version.id in runs
    # the log: a command sent (with rule and reason), an emergency stop, a reset, an unknown board
    await server._control({"type": "emergency_stop", "reason": "smoke"}, "local (alice)")
    await server._control({"type": "reset_emergency", "reason": "clear"}, "local (alice)")
    await board.heartbeat("ESP_0BADBAD0")
    await board.heartbeat("ESP_0BADBAD0")
    await asyncio.sleep(0.5)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "sent south.fan on by rule cool-south-when-north-hot" in text
    assert "EMERGENCY STOP all by local (alice): smoke" in text
    assert "emergency stop all reset by local (alice)" in text
    assert text.count("discovered ESP_0BADBAD0") == 1


async def test_the_status_page_is_served_whole(server: Server) -> None:
    status, page = await get(server, "/")
    assert status == 200 and "<title>Kaiser</title>" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page  # no CDN
    status, _ = await get(server, "/nothing-here")
    assert status == 404
