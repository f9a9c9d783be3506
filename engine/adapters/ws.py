"""WebSocket and HTTP on one port (SPEC section 5). Moves data, decides nothing.

``ws://HOST:PORT/ws``: clients subscribe to topics with MQTT wildcards and get JSON
events ``{"event_type", "ts", "topic", "data"}``. ``GET /health`` (JSON),
``GET /metrics`` (Prometheus text) and ``GET /query?sql=...`` (read-only SQL through
the running server, engine/adapters/query.py; needs a control key, as
``Authorization: Bearer T``) answer on the same port.

Control messages and ``/query`` always need a key (engine/auth.py); a hub without
keys refuses both. A missing, wrong or odd key (not a string, huge, not ASCII) is
an ``error`` event or HTTP 401, never an exception.

Each client has a bounded queue and its own sender task: a client whose queue fills
is dropped (close code 1013) and never delays the others. A client that sends
nothing for ``idle_timeout`` seconds (default 5 minutes) is closed (1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from engine.adapters.query import QueryBusy, QueryCancelled, QueryResult, QueryTimeout
from engine.adapters.rest import Answer, HttpConnection
from engine.auth import Keyring, operator
from engine.errors import StoreError

log = logging.getLogger("kaiser.ws")

CONTROL_TYPES = frozenset({"emergency_stop", "reset_emergency", "command", "sync"})

#: topics a client may subscribe to (first level); wildcards allowed below
TOPIC_ROOTS = frozenset({
    "sensor_data", "actuator_status", "actuator_command", "safety", "device",
    "logic_execution", "notification", "system", "#", "+",
})


class ControlRefused(Exception):
    """A control message the server will not carry out; the text goes to the client."""


#: ``on_control(msg, operator)``: ``operator`` names the key that opened it, plus
#: the login the client reports ("local (alice)")
ControlHandler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


#: ``http(method, path, args, body, operator)``: the REST views and the status page
#: (engine/adapters/rest.py); None when the path is not theirs. ``operator`` names the
#: control key the request carried (None: no valid key)
HttpHandler = Callable[[str, str, dict[str, list[str]], bytes, "str | None"], Awaitable[Answer | None]]


class QueryService(Protocol):
    """What answers ``/query``: engine.adapters.query.QueryPool."""

    async def run(self, sql: str, gone: Callable[[], bool] | None = None) -> QueryResult: ...

    async def aclose(self, wait: float = 2.0) -> None: ...


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT matching: ``+`` is one level, ``#`` (last) is any number of levels."""
    if pattern == "#" or pattern == topic:
        return True
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)


def valid_pattern(pattern: str) -> bool:
    parts = pattern.split("/")
    if not pattern or parts[0] not in TOPIC_ROOTS:
        return False
    for i, part in enumerate(parts):
        if "#" in part and (part != "#" or i != len(parts) - 1):
            return False
        if "+" in part and part != "+":
            return False
    return True


@dataclass(eq=False)
class Client:
    conn: ServerConnection
    queue: asyncio.Queue[str]
    patterns: set[str] = field(default_factory=set)
    dropped: bool = False

    def wants(self, topic: str) -> bool:
        return any(topic_matches(p, topic) for p in self.patterns)


class Hub:
    """The WebSocket/HTTP server. ``publish()`` fans an event out to subscribers.

    ``on_control(msg, operator)`` carries out a control message whose key was
    checked and returns a result dict, or raises ControlRefused. ``health()`` ->
    JSON-able dict, ``metrics()`` -> Prometheus text, ``query``: runs ``/query``
    (closed by ``stop()``; ``query_timeout`` seconds per query). ``keys``: the
    control keys (engine/auth.py); without any, control and ``/query`` are refused.
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:8765",
        *,
        keys: Keyring | None = None,
        max_clients: int = 100,
        on_control: ControlHandler | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        metrics: Callable[[], str] | None = None,
        query: QueryService | None = None,
        query_timeout: float = 10.0,
        queue_size: int = 1000,
        idle_timeout: float = 300.0,
        now: Callable[[], float] | None = None,
        http: HttpHandler | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port or 8765)
        self.keys = keys
        self.max_clients = max_clients
        self.on_control = on_control
        self.health = health or (lambda: {"ok": True})
        self.metrics = metrics or (lambda: "")
        self.query = query
        self.query_timeout = query_timeout
        self.queue_size = queue_size
        self.idle_timeout = idle_timeout
        self._now = now or time.time
        self.http = http
        self.clients: set[Client] = set()
        self._server: Server | None = None
        self.sent = 0
        self.slow_dropped = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=20,
            ping_timeout=20,
            max_size=64 * 1024,
            compression=None,
            close_timeout=2,
            # a /query answers inside the opening handshake: let it run to its limit
            open_timeout=self.query_timeout + 10,
            create_connection=HttpConnection,  # POST /api/v1/emergency_stop and /reset too
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])  # listen port 0 = any free port
        log.info("WebSocket on ws://%s:%d/ws", self.host, self.port)

    async def stop(self) -> None:
        """Interrupt running queries, close every connection."""
        if self.query is not None:
            with contextlib.suppress(Exception):
                await self.query.aclose()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    # ------------------------------------------------------------------ fan-out
    def publish(self, topic: str, event_type: str, data: dict[str, Any], ts: float | None = None) -> None:
        """Queue an event for every client subscribed to ``topic``; never blocks."""
        if not self.clients:
            return
        text: str | None = None
        for c in list(self.clients):
            if c.dropped or not c.wants(topic):
                continue
            if text is None:
                text = json.dumps(
                    {"event_type": event_type, "ts": iso(self._now() if ts is None else ts),
                     "topic": topic, "data": data},
                    default=str,
                )
            try:
                c.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._drop_slow(c)

    def _drop_slow(self, c: Client) -> None:
        c.dropped = True
        self.slow_dropped += 1
        self.clients.discard(c)
        log.warning("dropping slow WebSocket client %s (queue of %d full)", c.conn.remote_address, self.queue_size)
        asyncio.get_running_loop().create_task(c.conn.close(1013, "slow client: queue full"))

    # ------------------------------------------------------------------ HTTP
    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        method = getattr(request, "method", "GET")
        if self.http is not None and (url.path in ("/", "/index.html") or url.path.startswith("/api/")):
            args = parse_qs(url.query)
            key = self._key(request, args)
            who = operator(key, request.headers.get("X-Kaiser-Who")) if key is not None else None
            try:
                answer = await self.http(method, url.path, args, getattr(request, "body", b""), who)
            except Exception as exc:
                log.exception("%s %s failed", method, url.path)
                return _respond(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"})
            if answer is not None:
                return _respond(HTTPStatus(answer.status), answer.body, answer.content_type, list(answer.headers))
        if method != "GET":
            return _respond(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{method} {url.path}: GET only"},
                            extra=[("Allow", "GET")])
        if url.path == "/ws":
            if len(self.clients) >= self.max_clients:
                return _respond(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many clients"})
            return None
        if url.path == "/health":
            try:
                return _respond(HTTPStatus.OK, self.health())
            except Exception as exc:
                return _respond(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
        if url.path == "/metrics":
            return _respond(HTTPStatus.OK, self.metrics(), "text/plain; version=0.0.4")
        if url.path == "/query" and self.query is not None:
            return await self._query(conn, request, url.query)
        return _respond(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}; try /, /api/v1/, /ws, "
                                                         "/health, /metrics"})

    def _key(self, request: Request, args: dict[str, list[str]]) -> str | None:
        """The name of the control key an HTTP request carries (``Authorization:
        Bearer T``, or ``?token=T``), None without a valid one."""
        auth = request.headers.get_all("Authorization")
        if auth:  # one header, "Bearer T"; several are refused
            given = auth[0][7:].strip() if len(auth) == 1 and auth[0][:7].lower() == "bearer " else ""
        else:
            given = (args.get("token") or [""])[0]
        return self.keys.identify(given) if self.keys is not None else None

    async def _query(self, conn: ServerConnection, request: Request, query: str) -> Response:
        assert self.query is not None
        args = parse_qs(query)
        if self._key(request, args) is None:
            return _respond(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong token"},
                            extra=[("WWW-Authenticate", 'Bearer realm="kaiser"')])
        sql = (args.get("sql") or [""])[0]
        if not sql:
            return _respond(HTTPStatus.BAD_REQUEST, {"error": "missing ?sql="})

        def gone() -> bool:
            return conn.protocol.state is not State.CONNECTING

        try:
            result = await self.query.run(sql, gone)
        except QueryCancelled:
            if gone():
                # nobody to answer: abandon the handshake (websockets aborts the socket
                # quietly; answering a closed socket logs a traceback)
                raise asyncio.CancelledError from None
            return _respond(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "the server is shutting down"})
        except (QueryBusy, QueryTimeout) as exc:
            return _respond(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except StoreError as exc:
            return _respond(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Exception as exc:
            log.exception("query failed: %.200s", sql)
            return _respond(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"})
        if gone():
            raise asyncio.CancelledError  # the client left just as the answer was ready
        return _respond(HTTPStatus.OK, result.as_json())

    # ------------------------------------------------------------------ WebSocket
    async def _handle(self, conn: ServerConnection) -> None:
        client = Client(conn, asyncio.Queue(self.queue_size))
        self.clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(conn.recv(), self.idle_timeout)
                except TimeoutError:
                    await conn.close(1000, "idle for too long")
                    break
                await self._on_message(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _sender(self, client: Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await client.queue.get()
                await client.conn.send(text)
                self.sent += 1

    def _reply(self, client: Client, event_type: str, data: dict[str, Any]) -> None:
        text = json.dumps({"event_type": event_type, "ts": iso(self._now()), "data": data}, default=str)
        try:
            client.queue.put_nowait(text)
        except asyncio.QueueFull:
            self._drop_slow(client)

    def _error(self, client: Client, message: str, request: object = None) -> None:
        self._reply(client, "error", {"message": message, "request": request})

    async def _on_message(self, client: Client, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._error(client, f"not JSON: {exc}")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self._error(client, 'expected an object with a "type"', msg)
            return
        kind = msg["type"]
        if kind == "ping":
            self._reply(client, "pong", {})
        elif kind in ("subscribe", "unsubscribe"):
            topic = msg.get("topic")
            if not isinstance(topic, str) or not valid_pattern(topic):
                self._error(
                    client,
                    f"bad topic {topic!r}: one of {', '.join(sorted(TOPIC_ROOTS - {'#', '+'}))}"
                    " with optional /ID and MQTT wildcards + and #",
                    msg,
                )
                return
            if kind == "subscribe":
                client.patterns.add(topic)
            else:
                client.patterns.discard(topic)
            self._reply(client, f"{kind}d", {"topic": topic, "topics": sorted(client.patterns)})
        elif kind in CONTROL_TYPES:
            await self._control(client, msg)
        else:
            self._error(client, f"unknown message type {kind!r}", msg)

    async def _control(self, client: Client, msg: dict[str, Any]) -> None:
        shown = {k: v for k, v in msg.items() if k != "token"}
        if self.on_control is None or self.keys is None:
            self._error(client, "refused: this server takes no control messages", shown)
            return
        key = self.keys.identify(msg.get("token"))
        if key is None:
            self._error(client, "refused: missing or wrong token", shown)
            return
        try:
            result = await self.on_control(msg, operator(key, msg.get("who")))
        except ControlRefused as exc:
            self._error(client, f"refused: {exc}", shown)
            return
        except Exception as exc:
            log.exception("control message failed")
            self._error(client, f"failed: {exc}", shown)
            return
        self._reply(client, "control_result", {"request": shown, **result})


def _respond(status: HTTPStatus, body: object, content_type: str = "application/json",
             extra: list[tuple[str, str]] | None = None) -> Response:
    data = body if isinstance(body, str) else json.dumps(body, default=str)
    payload = data.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(payload))), *(extra or [])])
    return Response(int(status), status.phrase, headers, payload)
