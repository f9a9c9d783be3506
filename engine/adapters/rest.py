"""Read-only REST views under ``/api/v1/``, the OpenAPI document that describes
them, two control endpoints (``POST /api/v1/emergency_stop``, ``/api/v1/reset``,
with a control key) and the status page at ``/`` (SPEC section 5; docs/websocket.md).

Moves data, decides nothing: the views read what the server keeps (device tracker,
guard, latest readings, the store); the two POSTs are the same control messages
the WebSocket carries (``Server._control``), so the same checks apply. Rules are
never written through HTTP: git is the source of truth.

websockets parses only ``GET`` requests; :class:`HttpConnection` (passed to
``serve(create_connection=...)``) also reads ``POST`` with a small body, so both
share the one port. tests/unit/test_rest.py fails loudly when a websockets
release changes what it relies on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import difflib
import json
import re
import time
from collections.abc import Callable, Generator, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidMessage
from websockets.http11 import Request, parse_headers, parse_line
from websockets.protocol import CONNECTING, Protocol
from websockets.server import ServerProtocol

from engine.errors import KaiserError, StoreError
from engine.units import parse_duration

if TYPE_CHECKING:
    from engine.app import Server

API = "/api/v1"
MAX_BODY = 64 * 1024  # bytes of a POST body
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000
MAX_SPAN = 31 * 86400.0  # seconds: the widest window one history request may ask for


# --------------------------------------------------------------------------
# HTTP beyond GET on the WebSocket port


@dataclasses.dataclass
class HttpRequest(Request):
    """websockets' Request plus the method and the body (POST)."""

    method: str = "GET"
    body: bytes = b""


def _parse_request(
    read_line: Callable[[int], Generator[None, None, bytes]],
    read_exact: Callable[[int], Generator[None, None, bytes]],
) -> Generator[None, None, HttpRequest]:
    """websockets.http11.Request.parse for GET (unchanged rules) and POST (a body
    of at most MAX_BODY bytes, Content-Length required)."""
    line = yield from parse_line(read_line)
    try:
        method, raw_path, protocol = line.split(b" ", 2)
    except ValueError:
        raise ValueError(f"invalid HTTP request line: {line[:200]!r}") from None
    if protocol != b"HTTP/1.1":
        raise ValueError(f"unsupported protocol; expected HTTP/1.1: {line[:200]!r}")
    if method not in (b"GET", b"POST"):
        raise ValueError(f"unsupported HTTP method {method[:20]!r}")
    path = raw_path.decode("ascii", "surrogateescape")
    headers = yield from parse_headers(read_line)
    if "Transfer-Encoding" in headers:
        raise ValueError("transfer codings are not supported")
    body = b""
    if method == b"POST":
        try:
            n = int(headers.get("Content-Length", "0"))
        except ValueError:
            raise ValueError("bad Content-Length") from None
        if n < 0 or n > MAX_BODY:
            raise ValueError(f"body over {MAX_BODY} bytes")
        body = (yield from read_exact(n)) if n else b""
    elif "Content-Length" in headers:
        raise ValueError("unsupported request body")
    return HttpRequest(path, headers, method=method.decode(), body=body)


class HttpProtocol(ServerProtocol):
    """websockets' server protocol that also accepts ``POST`` (answered by
    ``process_request``; a WebSocket handshake is a GET as before)."""

    def parse(self) -> Generator[None]:
        if self.state is CONNECTING:
            try:
                request = yield from _parse_request(self.reader.read_line, self.reader.read_exact)
            except Exception as exc:
                self.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
                self.handshake_exc.__cause__ = exc
                self.send_eof()
                self.parser = self.discard()
                next(self.parser)
                yield
            self.events.append(request)
        yield from Protocol.parse(self)


class HttpConnection(ServerConnection):
    """``serve(create_connection=HttpConnection)``: its protocol reads POST too."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        if type(protocol) is ServerProtocol:
            protocol.__class__ = HttpProtocol
            protocol.parser = protocol.parse()  # nothing was read yet: start over
            next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: object
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _error(status: int, message: str, **extra: object) -> Answer:
    return Answer(status, {"error": message, **extra})


# --------------------------------------------------------------------------
# helpers


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str, now: float) -> float:
    """``since``/``until``: a duration back from now (``1h``, ``90s``, ``3600``) or an
    ISO 8601 time (UTC when it names no zone). Raises ValueError."""
    text = text.strip()
    try:
        return now - parse_duration(text)
    except (KaiserError, ValueError):
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (1h, 90s) nor an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _one(args: Mapping[str, list[str]], key: str) -> str | None:
    v = args.get(key)
    return v[0] if v else None


def _limit(args: Mapping[str, list[str]]) -> int:
    raw = _one(args, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    n = int(raw)  # ValueError: 400
    if not 1 <= n <= MAX_LIMIT:
        raise ValueError(f"limit must be 1-{MAX_LIMIT}")
    return n


def _state(v: float | None) -> str | None:
    if v is None:
        return None
    return "off" if v <= 0 else ("on" if v >= 1 else f"{v:.2f}")


_SAFE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")


# --------------------------------------------------------------------------
# the views


class RestApi:
    """Answers ``/``, ``/api/v1/...`` for a running :class:`engine.app.Server`."""

    def __init__(self, server: Server, *, query_timeout: float = 10.0) -> None:
        self.server = server
        self.query_timeout = query_timeout
        self._reads = asyncio.Semaphore(2)  # store reads at once (beyond: wait)
        self._page: bytes | None = None

    async def handle(self, method: str, path: str, args: Mapping[str, list[str]], body: bytes,
                     operator: str | None) -> Answer | None:
        """None when the path is not ours. ``operator``: the name of the control key
        the request carried (None: no valid key)."""
        if path in ("/", "/index.html"):
            if method != "GET":
                return _error(405, "GET only")
            return Answer(200, self.page(), "text/html; charset=utf-8",
                          (("Cache-Control", "no-cache"),))
        if path != API and not path.startswith(API + "/"):
            return None
        tail = path[len(API):].strip("/")
        if method == "POST":
            if tail in ("emergency_stop", "reset"):
                return await self._control(tail, body, operator)
            return _error(405, f"{path} is read-only; POST goes to {API}/emergency_stop or {API}/reset")
        if tail in ("emergency_stop", "reset"):
            return _error(405, "POST with a control key", allow="POST")
        try:
            return await self._get(tail, args)
        except ValueError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            return _error(503, f"store: {exc}")

    async def _get(self, tail: str, args: Mapping[str, list[str]]) -> Answer:
        s = self.server
        if tail in ("", "openapi.json"):
            return Answer(200, openapi())
        if tail == "health":
            return Answer(200, s.health())
        if tail == "devices":
            return Answer(200, {"devices": [self.device(d) for d in self._devices()],
                                "unknown": self.unknown()})
        if tail.startswith("devices/"):
            name = tail.split("/", 1)[1]
            dep = s.deployment
            if dep is None or name not in dep.devices:
                known = list(dep.devices) if dep is not None else []
                return _error(404, f"unknown device {name!r}{suggest(name, known)}")
            return Answer(200, self.device(dep.devices[name], detail=True))
        if tail == "sensors":
            return Answer(200, {"sensors": self.sensors()})
        if tail == "actuators":
            return Answer(200, {"actuators": self.actuators()})
        if tail == "rules":
            return Answer(200, {"rules": self.rules()})
        if tail == "history":
            return await self.history(args)
        if tail == "commands":
            return await self.commands(args)
        if tail == "events":
            return await self.events(args)
        return _error(404, f"no such view {API}/{tail}; see {API}/openapi.json")

    # ---- live state
    def _devices(self) -> list[Any]:
        dep = self.server.deployment
        return list(dep.devices.values()) if dep is not None else []

    def device(self, d: Any, detail: bool = False) -> dict[str, Any]:
        s = self.server
        tracker = s.tracker
        b = tracker.boards.get(d.esp_id) if tracker is not None else None
        out: dict[str, Any] = {
            "name": d.name, "esp_id": d.esp_id, "zone": d.zone, "board": d.board,
            "firmware": tracker.generation(d.esp_id) if tracker is not None else d.firmware,
            "online": bool(s.online.get(d.esp_id)),
            "last_seen": iso(b.last_seen) if b is not None and b.last_seen else None,
            "registered": bool(b is not None and b.acked),
            "emergency_stop": s._emergency_active(d.name),
            "sensors": [r for x in d.sensors for r in x.refs()],
            "actuators": [a.ref for a in d.actuators],
        }
        if detail:
            out["uptime_s"] = b.uptime if b is not None else None
            refs = set(out["sensors"])
            out["sensor_values"] = [x for x in self.sensors() if x["ref"] in refs]
            names = set(out["actuators"])
            out["actuator_states"] = [x for x in self.actuators() if x["ref"] in names]
        return out

    def unknown(self) -> list[dict[str, Any]]:
        tracker = self.server.tracker
        if tracker is None:
            return []
        return [{"esp_id": e, "last_seen": iso(b.last_seen) if b.last_seen else None}
                for e, b in list(tracker.unknown.items())[-100:]]

    def sensors(self) -> list[dict[str, Any]]:
        import sensors as libs

        now = self.server.clock.now()
        latest = self.server.telemetry.latest
        out = []
        for d in self._devices():
            for x in d.sensors:
                for ref in x.refs():
                    r = latest.get(ref)
                    unit = r.unit if r is not None else _unit(libs, x.type, ref)
                    out.append({"ref": ref, "device": d.name, "type": x.type, "unit": unit,
                                "value": r.value if r is not None else None,
                                "quality": r.quality if r is not None else None,
                                "ts": iso(r.ts) if r is not None else None,
                                "age_s": round(now - r.ts, 3) if r is not None else None})
        return out

    def actuators(self) -> list[dict[str, Any]]:
        s = self.server
        now = s.clock.now()
        guard = s.kaiser.guard if s.kaiser is not None else None
        state = guard.state.actuators if guard is not None else {}
        limits = s.deployment.safety.actuators if s.deployment is not None else {}
        out = []
        for d in self._devices():
            latched = s._emergency_active(d.name)
            for a in d.actuators:
                st = state.get(a.ref)
                sent = s.last_sent.get(a.ref)
                reported = s.reported.get(a.ref)
                holder = None
                if st is not None and st.lease is not None and (st.lease_end is None or st.lease_end > now):
                    c = st.lease
                    holder = {"rule": c.rule, "source": c.source, "reason": c.reason, "until": iso(st.lease_end)}
                elif sent is not None and sent.value > 0:
                    holder = {"rule": None, "source": sent.by, "reason": None, "until": None}
                lim = limits.get(a.ref)
                out.append({
                    "ref": a.ref, "device": d.name, "type": a.type, "critical": a.critical,
                    "state": _state(reported if reported is not None else (sent.value if sent else None)),
                    "reported": reported,
                    "commanded": sent.value if sent is not None else None,
                    "commanded_at": iso(sent.ts) if sent is not None else None,
                    "commanded_by": sent.by if sent is not None else None,
                    "holder": holder,
                    "latched": latched,
                    "limits": _limits(lim),
                })
        return out

    def rules(self) -> list[dict[str, Any]]:
        s = self.server
        dep = s.deployment
        if dep is None:
            return []
        last = s.telemetry.last_run
        due = rule_due(s)
        counts: dict[str, int] = {}
        for (rule, _), n in s.telemetry.rule_runs.items():
            counts[rule] = counts.get(rule, 0) + n
        out = []
        for r in dep.rules:
            lr = last.get(r.name)
            out.append({"name": r.name, "kind": r.kind, "enabled": r.enabled, "priority": r.priority,
                        "cooldown_s": r.cooldown, "description": r.description,
                        "last_run": {"ts": iso(lr[0]), "outcome": lr[1]} if lr is not None else None,
                        "runs": counts.get(r.name, 0),
                        "next_due": iso(due.get(r.name))})
        return out

    # ---- the store
    def _window(self, args: Mapping[str, list[str]], default: str) -> tuple[float, float]:
        now = self.server.clock.now()
        since = parse_time(_one(args, "since") or default, now)
        until_raw = _one(args, "until")
        until = parse_time(until_raw, now) if until_raw else now + 1.0
        if until - since > MAX_SPAN:
            raise ValueError("at most 31 days per request: narrow since/until")
        return since, until

    async def _select(self, sql: str, params: list[object], limit: int) -> tuple[list[tuple[Any, ...]], bool]:
        store = self.server.store
        if store is None:
            raise StoreError("no store")
        async with self._reads:
            def run() -> Any:
                store.flush()  # what arrived before this request is in the answer
                return store.query(sql, params, max_rows=limit, timeout=self.query_timeout)

            res = await asyncio.to_thread(run)
        return res.rows, res.truncated

    async def history(self, args: Mapping[str, list[str]]) -> Answer:
        sensor = _one(args, "sensor")
        dep = self.server.deployment
        known = dep.sensor_refs() if dep is not None else []
        if sensor is not None and sensor not in known:
            return _error(404, f"unknown sensor {sensor!r}{suggest(sensor, known)}")
        since, until = self._window(args, "1h")
        limit = _limit(args)
        bucket_raw = _one(args, "bucket")
        params: list[object] = [since, until]
        where = "ts >= to_timestamp(?) AND ts < to_timestamp(?)"
        if sensor is not None:
            where += " AND sensor = ?"
            params.append(sensor)
        if bucket_raw:
            bucket = parse_duration(bucket_raw)
            if bucket <= 0:
                raise ValueError("bucket must be positive")
            sql = (f"SELECT sensor, epoch(time_bucket(to_seconds(?), ts)) AS t, avg(value), any_value(unit), "
                   f"max(quality) FROM readings WHERE {where} GROUP BY sensor, t ORDER BY t, sensor")
            params.insert(0, float(bucket))
        else:
            sql = (f"SELECT sensor, epoch(ts), value, unit, quality FROM readings WHERE {where} "
                   "ORDER BY ts, sensor")
        rows, truncated = await self._select(sql, params, limit)
        return Answer(200, {"sensor": sensor, "since": iso(since), "until": iso(min(until, self.server.clock.now())),
                            "bucket_s": parse_duration(bucket_raw) if bucket_raw else None,
                            "readings": [{"sensor": r[0], "ts": iso(float(r[1])), "value": r[2], "unit": r[3] or "",
                                          "quality": r[4] or ""} for r in rows],
                            "truncated": truncated})

    async def commands(self, args: Mapping[str, list[str]]) -> Answer:
        actuator = _one(args, "actuator")
        dep = self.server.deployment
        known = [a.ref for d in self._devices() for a in d.actuators]
        if actuator is not None and actuator not in known:
            return _error(404, f"unknown actuator {actuator!r}{suggest(actuator, known)}")
        since, until = self._window(args, "24h")
        params: list[object] = [since, until]
        where = "ts >= to_timestamp(?) AND ts < to_timestamp(?)"
        if actuator is not None:
            where += " AND actuator = ?"
            params.append(actuator)
        outcome = _one(args, "outcome")
        if outcome is not None:
            if outcome not in ("sent", "blocked"):
                raise ValueError("outcome is sent or blocked")
            where += " AND outcome = ?"
            params.append(outcome)
        rows, truncated = await self._select(
            "SELECT epoch(ts), actuator, outcome, value, duration, source, rule, priority, reason, code, "
            f"block_reason, config_version FROM commands WHERE {where} ORDER BY ts DESC", params, _limit(args))
        del dep
        keys = ("ts", "actuator", "outcome", "value", "duration", "source", "rule", "priority", "reason", "code",
                "block_reason", "config_version")
        items = []
        for r in rows:
            item = dict(zip(keys, r, strict=True))
            item["ts"] = iso(float(r[0]))
            items.append(item)
        return Answer(200, {"since": iso(since), "commands": items, "truncated": truncated})

    async def events(self, args: Mapping[str, list[str]]) -> Answer:
        since, until = self._window(args, "24h")
        params: list[object] = [since, until]
        where = "ts >= to_timestamp(?) AND ts < to_timestamp(?)"
        for key in ("kind", "subject", "severity"):
            v = _one(args, key)
            if v is not None:
                if not _SAFE.fullmatch(v):
                    raise ValueError(f"bad {key}")
                where += f" AND {key} = ?"
                params.append(v)
        rows, truncated = await self._select(
            f"SELECT epoch(ts), kind, severity, subject, message, data FROM events WHERE {where} ORDER BY ts DESC",
            params, _limit(args))
        items = []
        for ts, kind, severity, subject, message, data in rows:
            try:
                parsed = json.loads(data) if isinstance(data, str) and data else (data or {})
            except ValueError:
                parsed = {"raw": data}
            items.append({"ts": iso(float(ts)), "kind": kind, "severity": severity, "subject": subject or "",
                          "message": message or "", "data": parsed if isinstance(parsed, dict) else {"value": parsed}})
        return Answer(200, {"since": iso(since), "events": items, "truncated": truncated})

    # ---- control
    async def _control(self, what: str, body: bytes, operator: str | None) -> Answer:
        from engine.adapters.ws import ControlRefused

        if operator is None:
            return Answer(401, {"error": "missing or wrong token: Authorization: Bearer TOKEN"},
                          headers=(("WWW-Authenticate", 'Bearer realm="kaiser"'),))
        try:
            data = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"not JSON: {exc}")
        if not isinstance(data, dict):
            return _error(400, "expected a JSON object")
        msg: dict[str, Any] = {"type": "emergency_stop" if what == "emergency_stop" else "reset_emergency"}
        for key in ("device", "reason"):
            if data.get(key) is not None:
                if not isinstance(data[key], str):
                    return _error(400, f"{key} must be a string")
                msg[key] = data[key]
        if "(" not in operator and isinstance(data.get("who"), str):  # the login, recorded with the key
            from engine.auth import operator as named

            operator = named(operator, data["who"])
        if what == "emergency_stop" and not msg.get("reason"):
            return _error(400, "an emergency stop needs a reason")
        try:
            result = await self.server._control(msg, operator)
        except ControlRefused as exc:
            text = str(exc)
            if text.startswith("unknown device"):
                dep = self.server.deployment
                text += suggest(str(msg.get("device")), list(dep.devices) if dep is not None else [])
                return _error(404, text)
            return _error(409, text)
        return Answer(200, {**result, "operator": operator, "at": iso(time.time())})

    # ---- the page
    def page(self) -> str:
        if self._page is None:
            self._page = resources.files("engine.adapters").joinpath("static/index.html").read_bytes()
        return self._page.decode()


def _unit(libs: Any, sensor_type: str, ref: str) -> str:
    try:
        lib, q = libs.registry.resolve(sensor_type)
    except Exception:
        return ""
    want = q or ref.rsplit(".", 1)[-1]
    for quantity in lib.quantities:
        if quantity.name == want:
            return str(quantity.unit)
    return str(lib.quantities[0].unit) if lib.quantities else ""


def _limits(lim: Any) -> dict[str, Any]:
    if lim is None:
        return {}
    out: dict[str, Any] = {}
    if lim.max_runtime is not None:
        out["max_runtime_s"] = lim.max_runtime
    if lim.min_off is not None:
        out["min_off_s"] = lim.min_off
    if lim.max_starts is not None:
        out["max_starts"] = {"count": lim.max_starts[0], "per_s": lim.max_starts[1]}
    if lim.rate_limit is not None:
        out["rate_limit"] = {"count": lim.rate_limit[0], "per_s": lim.rate_limit[1]}
    if lim.pwm is not None:
        out["pwm"] = [lim.pwm[0], lim.pwm[1]]
    out["on_sensor_loss"] = lim.on_sensor_loss
    return out


def rule_due(server: Server) -> dict[str, float]:
    """rule -> the next instant its network has a timer due (``for:``, ``every``,
    ``at``, windows); best effort, from the compiled terms' facts."""
    engine = getattr(server.kaiser, "engine", None)
    program = getattr(engine, "program", None)
    due: Mapping[str, float] = getattr(engine, "_due", None) or {}
    if program is None or not due:
        return {}
    out: dict[str, float] = {}
    try:
        for rule, terms in program.terms.items():
            for term in terms:
                for fact in term.facts:
                    t = due.get(fact)
                    if t is not None and (rule not in out or t < out[rule]):
                        out[rule] = t
    except Exception:  # the engine's internals moved: no next-due times, never a failed view
        return {}
    return out


# --------------------------------------------------------------------------
# the OpenAPI document


def _nullable(t: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(t, str):
        return {"type": [t, "null"]}
    return {"anyOf": [t, {"type": "null"}]}


_TS = {"type": "string", "format": "date-time"}
_TSN = {"type": ["string", "null"], "format": "date-time"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = True) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": extra}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/api/v1`` (schemas are JSON Schema 2020-12)."""
    device = _obj({
        "name": {"type": "string"}, "esp_id": {"type": "string"}, "zone": _nullable("string"),
        "board": _nullable("string"), "firmware": {"type": "string", "enum": ["legacy", "current", "auto"]},
        "online": {"type": "boolean"}, "last_seen": _TSN, "registered": {"type": "boolean"},
        "emergency_stop": {"type": "boolean"},
        "sensors": {"type": "array", "items": {"type": "string"}},
        "actuators": {"type": "array", "items": {"type": "string"}},
    })
    sensor = _obj({
        "ref": {"type": "string"}, "device": {"type": "string"}, "type": {"type": "string"},
        "unit": {"type": "string"}, "value": _nullable("number"), "quality": _nullable("string"), "ts": _TSN,
        "age_s": _nullable("number"),
    })
    holder = _obj({"rule": _nullable("string"), "source": {"type": "string"}, "reason": _nullable("string"),
                   "until": _TSN})
    actuator = _obj({
        "ref": {"type": "string"}, "device": {"type": "string"}, "type": {"type": "string"},
        "critical": {"type": "boolean"}, "state": _nullable("string"),
        "reported": _nullable("number"), "commanded": _nullable("number"), "commanded_at": _TSN,
        "commanded_by": _nullable("string"), "holder": _nullable({"$ref": "#/components/schemas/Holder"}),
        "latched": {"type": "boolean"}, "limits": {"type": "object"},
    })
    rule = _obj({
        "name": {"type": "string"}, "kind": {"type": "string", "enum": ["edge", "level"]},
        "enabled": {"type": "boolean"}, "priority": {"type": "integer"}, "cooldown_s": {"type": "number"},
        "description": {"type": "string"},
        "last_run": _nullable(_obj({"ts": _TS, "outcome": {"type": "string"}})),
        "runs": {"type": "integer", "minimum": 0}, "next_due": _TSN,
    })
    reading = _obj({"sensor": {"type": "string"}, "ts": _TS, "value": {"type": "number"},
                    "unit": {"type": "string"}, "quality": {"type": "string"}})
    command = _obj({
        "ts": _TS, "actuator": {"type": "string"}, "outcome": {"type": "string", "enum": ["sent", "blocked"]},
        "value": _nullable("number"), "duration": _nullable("number"), "source": _nullable("string"),
        "rule": _nullable("string"), "priority": _nullable("integer"), "reason": _nullable("string"),
        "code": _nullable("string"), "block_reason": _nullable("string"), "config_version": _nullable("string"),
    })
    event = _obj({"ts": _TS, "kind": {"type": "string"}, "severity": _nullable("string"),
                  "subject": {"type": "string"}, "message": {"type": "string"}, "data": {"type": "object"}})
    error = _obj({"error": {"type": "string"}}, ["error"])
    control = _obj({"ok": {"type": "boolean"}, "target": {"type": "string"}, "operator": {"type": "string"},
                    "at": _TS})
    health = _obj({"status": {"type": "string", "enum": ["ok", "degraded"]}, "kaiser_id": {"type": "string"},
                   "rules_version": _nullable("string"), "git_commit": _nullable("string"),
                   "last_reload": _nullable("object"), "reload_ok": {"type": "boolean"},
                   "uptime_s": {"type": "number"}, "mqtt": {"type": "object"}, "store": {"type": "object"},
                   "devices": {"type": "object"}, "latches": {"type": "array"}},
                  ["status", "kaiser_id", "rules_version", "last_reload", "reload_ok", "uptime_s"])

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def ok(schema: dict[str, Any], what: str) -> dict[str, Any]:
        return {"description": what, "content": {"application/json": {"schema": schema}}}

    def err(what: str) -> dict[str, Any]:
        return ok(ref("Error"), what)

    def listing(key: str, item: str, **more: Any) -> dict[str, Any]:
        return _obj({key: {"type": "array", "items": ref(item)}, **more})

    def q(name: str, text: str, example: str | None = None, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        p: dict[str, Any] = {"name": name, "in": "query", "required": False, "description": text,
                             "schema": schema or {"type": "string"}}
        if example is not None:
            p["example"] = example
        return p

    since = q("since", "a duration back from now (1h, 90s, 3600) or an ISO 8601 time", "1h")
    until = q("until", "as since; default now", None)
    limit = q("limit", f"at most this many items (1-{MAX_LIMIT}, default {DEFAULT_LIMIT})", None,
              {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT})
    window = {"since": _TS, "truncated": {"type": "boolean"}}
    token: list[dict[str, list[str]]] = [{"bearer": []}]
    control_body = {"required": False, "content": {"application/json": {"schema": _obj(
        {"device": {"type": "string", "description": "a device name; all boards when absent"},
         "reason": {"type": "string"}, "who": {"type": "string", "description": "the login, recorded with the key"}},
        [], True)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kaiser", "version": "1",
                 "description": "Read-only views of a running Kaiser, plus emergency stop and reset with a "
                                "control key. Rules are never written through HTTP: git is the source of truth."},
        "servers": [{"url": "/"}],
        "paths": {
            f"{API}/devices": {"get": {"summary": "boards of the device map: online, last seen, firmware",
                                       "operationId": "devices",
                                       "responses": {"200": ok(listing("devices", "Device", unknown={
                                           "type": "array", "items": _obj({"esp_id": {"type": "string"},
                                                                           "last_seen": _TSN})}), "devices")}}},
            f"{API}/devices/{{name}}": {"get": {
                "summary": "one board, with its sensors' values and actuators' states", "operationId": "device",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": ok({"allOf": [ref("Device"), _obj({
                    "uptime_s": _nullable("number"),
                    "sensor_values": {"type": "array", "items": ref("Sensor")},
                    "actuator_states": {"type": "array", "items": ref("Actuator")}})]}, "the device"),
                    "404": err("no such device (with a suggestion)")}}},
            f"{API}/sensors": {"get": {"summary": "every sensor ref: latest value, unit, quality, age",
                                       "operationId": "sensors",
                                       "responses": {"200": ok(listing("sensors", "Sensor"), "sensors")}}},
            f"{API}/actuators": {"get": {"summary": "every actuator: state, who holds it, limits, latched",
                                         "operationId": "actuators",
                                         "responses": {"200": ok(listing("actuators", "Actuator"), "actuators")}}},
            f"{API}/rules": {"get": {"summary": "every rule: enabled, last run, next due", "operationId": "rules",
                                     "responses": {"200": ok(listing("rules", "Rule"), "rules")}}},
            f"{API}/history": {"get": {
                "summary": "stored readings, oldest first", "operationId": "history",
                "parameters": [q("sensor", "a sensor ref; every sensor when absent", "north.air_temp"), since, until,
                               q("bucket", "average per bucket of this duration (1m, 300)", None), limit],
                "responses": {"200": ok(listing("readings", "Reading", sensor=_nullable("string"), **window,
                                                until=_TS, bucket_s=_nullable("number")), "readings"),
                              "400": err("bad parameter"), "404": err("unknown sensor (with a suggestion)")}}},
            f"{API}/commands": {"get": {
                "summary": "commands sent and blocked, newest first", "operationId": "commands",
                "parameters": [q("actuator", "an actuator ref", "north.fan"), since, until,
                               q("outcome", "sent or blocked", None, {"type": "string", "enum": ["sent", "blocked"]}),
                               limit],
                "responses": {"200": ok(listing("commands", "Command", **window), "commands"),
                              "400": err("bad parameter"), "404": err("unknown actuator (with a suggestion)")}}},
            f"{API}/events": {"get": {
                "summary": "events (safety, emergency, device, reload, ...), newest first", "operationId": "events",
                "parameters": [since, until, q("kind", "only this kind", "emergency"), q("subject", "only this subject"),
                               q("severity", "only this severity"), limit],
                "responses": {"200": ok(listing("events", "Event", **window), "events"),
                              "400": err("bad parameter")}}},
            f"{API}/health": {"get": {"summary": "as GET /health", "operationId": "health",
                                      "responses": {"200": ok(ref("Health"), "health")}}},
            f"{API}/emergency_stop": {"post": {
                "summary": "latched emergency stop of one board or all", "operationId": "emergency_stop",
                "security": token, "requestBody": control_body,
                "responses": {"200": ok(ref("Control"), "stopped"), "400": err("bad body (a reason is required)"),
                              "401": err("missing or wrong key"), "404": err("unknown device")}}},
            f"{API}/reset": {"post": {
                "summary": "reset an emergency stop (turns nothing on)", "operationId": "reset",
                "security": token, "requestBody": control_body,
                "responses": {"200": ok(ref("Control"), "reset"), "400": err("bad body"),
                              "401": err("missing or wrong key"), "404": err("unknown device")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a control key (docs/websocket.md, Security)"}},
            "schemas": {"Device": device, "Sensor": sensor, "Holder": holder, "Actuator": actuator, "Rule": rule,
                        "Reading": reading, "Command": command, "Event": event, "Error": error,
                        "Control": control, "Health": health},
        },
    }
