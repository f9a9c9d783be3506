"""The MQTT link (aiomqtt over paho): subscribe, hand messages on, publish. Decides nothing.

- fixed client id and a persistent session (MQTT 3.1.1, ``clean_session=False``):
  QoS 1 messages sent while Kaiser restarts are delivered when it is back;
- a last will (``server/status`` offline) and ``on_connect`` messages (online).
  The will is registered with the broker at connect and published by the broker,
  unchanged, when the link dies: its ``timestamp`` is when the server made it (the
  start of ``kaiser run``, kept for every reconnect), not when the link was lost;
  the broker's receive time is the moment of loss;
- reconnects with exponential backoff (0.5 s .. 30 s) when the broker goes away;
  messages published meanwhile wait in a bounded queue and go out on reconnect,
  unless older than ``max_queue_age`` seconds (a stale ON is worse than none);
- ``publish()`` never awaits: it hands the message to paho, which writes it when
  the socket is ready (awaiting every PUBACK would serialise all commands).
- ``mqtts://`` is TLS (:func:`tls_context`, shared with engine/adapters/mqtt5link.py).

Private internals used (pyproject pins aiomqtt and paho-mqtt below their next major;
tests/unit/test_dependencies.py fails loudly when a release drops one): aiomqtt's
``Client._client`` (the paho client: non-blocking publish, its own ``on_message``),
``Client._queue`` (messages a persistent session delivers with the CONNACK) and
``Client._disconnected``; paho's ``_sock`` and ``_sock_recv`` (the read buffer,
which steps aside with a warning when they are missing).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiomqtt

log = logging.getLogger("kaiser.mqtt")


@dataclass(frozen=True, slots=True)
class Publish:
    """One message to send. Same shape as the codec's Outgoing."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


OnMessage = Callable[[str, bytes, bool], None]


class _ReadBuffer:
    """paho reads every packet with three or more ``recv`` calls (1 byte of type, the
    length byte by byte, then the body) and handles only about one packet per
    readable event: ~4 system calls and a loop iteration per message. This reads up
    to 64 KB at once and serves paho's small reads from it, and ``loop_read`` goes
    on while whole packets are buffered (one readable event, many messages)."""

    __slots__ = ("data", "orig_loop_read", "orig_recv", "paho", "pos", "size", "sock")

    def __init__(self, paho: Any, size: int = 65536) -> None:
        self.paho = paho
        self.size = size
        self.sock: Any = None
        self.data = b""
        self.pos = 0
        self.orig_recv = paho._sock_recv
        self.orig_loop_read = paho.loop_read
        paho._sock_recv = self.recv
        paho.loop_read = self.loop_read

    def recv(self, bufsize: int) -> bytes:
        sock = self.paho._sock
        if sock is not self.sock:  # a new connection: nothing buffered belongs to it
            self.sock, self.data, self.pos = sock, b"", 0
        data, pos = self.data, self.pos
        if pos >= len(data):
            data = self.orig_recv(self.size)  # BlockingIOError, OSError as paho expects
            pos = 0
            if not data:
                self.data, self.pos = b"", 0
                return data  # EOF: paho reports the connection lost
        out = data[pos:pos + bufsize]
        self.data, self.pos = data, pos + len(out)
        return out

    def loop_read(self, max_packets: int = 1) -> Any:
        rc = self.orig_loop_read(max_packets)
        while rc == 0 and self.pos < len(self.data) and self.paho._sock is not None \
                and self.paho._sock is self.sock:
            before = (self.data, self.pos)
            rc = self.orig_loop_read(1)
            if (self.data, self.pos) == before:
                break
        return rc


def buffer_reads(paho: Any) -> None:
    """Install :class:`_ReadBuffer` on a paho client (paho 2.x internals; a paho
    without them keeps its own reads, slower but correct)."""
    if not (callable(getattr(paho, "_sock_recv", None)) and callable(getattr(paho, "loop_read", None))
            and hasattr(paho, "_sock")):
        log.warning("paho without _sock_recv/loop_read: socket reads are not buffered")
        return
    _ReadBuffer(paho)


def parse_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` (or ``host:port``, ``host``) -> (host, port); port 1883 by
    default, 8883 for ``mqtts://``."""
    u = urlparse(url if "://" in url else f"mqtt://{url}")
    return u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)


def tls_context(url: str) -> ssl.SSLContext | None:
    """TLS for an ``mqtts://`` URL (None for ``mqtt://``), the same for every MQTT
    client: the broker's certificate must chain to a CA the system trusts (or to the
    CAs in ``$SSL_CERT_FILE`` / ``$SSL_CERT_DIR``, which replace the system's) and
    name the host of the URL."""
    if urlparse(url).scheme != "mqtts":
        return None
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


def describe(exc: BaseException) -> str:
    """A connection error as the log shows it; a broker certificate that was not
    accepted says so and where trust comes from (aiomqtt hands the ssl error on as
    text only, hence the match on it)."""
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" not in text:
        return text
    said = re.search(r"certificate verify failed: (.*?)(?: \(_ssl\.c:\d+\))?$", text)
    reason = getattr(exc, "verify_message", None) or (said.group(1) if said else None)
    detail = f"certificate verify failed: {reason}" if reason else text
    return (f"TLS: the broker's certificate was not accepted ({detail}); Kaiser trusts the "
            "system's CAs, or only those in $SSL_CERT_FILE when it is set")


def _as_publish(m: Any) -> Publish:
    if isinstance(m, Publish):
        return m
    topic, payload, qos, retain = m  # codec Outgoing is a 4-tuple / NamedTuple
    return Publish(topic, payload if isinstance(payload, bytes) else str(payload).encode(), int(qos), bool(retain))


class LinkState:
    """Up or down, with an event to wait for and a callback on every change: what the
    MQTT links (this one, engine/adapters/mqtt5link.py, the ingest reader) share."""

    connected: bool
    on_state: Callable[[bool], None] | None
    _connected_evt: asyncio.Event

    def _init_state(self, on_state: Callable[[bool], None] | None = None) -> None:
        self.connected = False
        self.on_state = on_state
        self._connected_evt = asyncio.Event()

    def _set_state(self, up: bool) -> None:
        if up == self.connected:
            return
        self.connected = up
        if up:
            self._connected_evt.set()
        else:
            self._connected_evt.clear()
        if self.on_state is not None:
            try:
                self.on_state(up)
            except Exception:
                log.exception("MQTT state callback failed")

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected (and subscribed) within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._connected_evt.wait(), timeout)
        except TimeoutError:
            return False
        return True


class MqttLink(LinkState):
    """Keeps one MQTT session alive and moves messages both ways.

    ``on_message(topic, payload, retained)`` is called synchronously for every message
    (keep it short and never let it raise: exceptions are logged and swallowed).
    ``on_connect()`` returns messages to publish on every (re)connect, before anything
    queued. ``will`` is the last will. ``unsubscribe``: filters the persistent session
    may still hold from an earlier run that another reader takes now (the ingest
    reader, engine/adapters/ingest.py); dropped at every connect.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: OnMessage,
        *,
        will: Any = None,
        on_connect: Callable[[], Iterable[Any]] | None = None,
        on_state: Callable[[bool], None] | None = None,
        unsubscribe: Sequence[str] = (),
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        max_queue: int = 100_000,
        max_queue_age: float = 30.0,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.host, self.port = parse_url(url)
        self.tls = tls_context(url)
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.unsubscribe = [t for t in unsubscribe if t not in self.subscriptions]
        self.on_message = on_message
        self.on_connect = on_connect
        self.will = _as_publish(will) if will is not None else None
        self.username = username or None
        self.password = password or None
        self.keepalive = keepalive
        self.max_queue_age = max_queue_age
        self.backoff = backoff
        self._queue: deque[tuple[float, Publish]] = deque(maxlen=max_queue)
        self._client: aiomqtt.Client | None = None
        self._paho: Any = None
        self._closing = False
        self._init_state(on_state)
        self.received = 0
        self.published = 0
        self.dropped = 0
        self.reconnects = 0
        self.errors = 0

    # ------------------------------------------------------------------ publish
    def publish(self, msg: Any) -> None:
        """Send ``msg`` (Publish or (topic, payload, qos, retain)) now or on reconnect."""
        m = _as_publish(msg)
        if self._paho is not None and self.connected and not self._queue and self._send(m):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append((time.monotonic(), m))

    def _send(self, m: Publish) -> bool:
        try:
            info = self._paho.publish(m.topic, m.payload, m.qos, m.retain)
        except Exception as exc:  # socket gone mid-call: queue it
            log.debug("publish failed: %s", exc)
            return False
        if info.rc != 0:
            return False
        self.published += 1
        return True

    def _drain(self) -> None:
        now = time.monotonic()
        while self._queue and self.connected:
            at, m = self._queue[0]
            if now - at > self.max_queue_age and not m.retain:
                self._queue.popleft()
                self.dropped += 1
                continue
            if not self._send(m):
                return
            self._queue.popleft()

    # ------------------------------------------------------------------ session
    def _make_client(self) -> aiomqtt.Client:
        will = None
        if self.will is not None:
            will = aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            will=will,
            keepalive=self.keepalive,
            timeout=10,
            # latency at light load: do not let Nagle hold back a command
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_queued_incoming_messages=0,
            tls_context=self.tls,
        )
        buffer_reads(client._client)
        return client

    async def run(self) -> None:
        """Connect, subscribe, deliver messages; reconnect with backoff until close()."""
        delay = self.backoff[0]
        while not self._closing:
            client = self._make_client()
            try:
                async with client:
                    self._client = client
                    self._paho = client._client  # paho: non-blocking publish (see module doc)
                    self._paho.on_message = self._on_paho_message
                    # a persistent session's queued messages can arrive with the CONNACK,
                    # before the handler above was installed: aiomqtt queued them
                    self._drain_early(client)
                    if self.unsubscribe:  # another reader takes these now (a persistent session kept them)
                        await client.unsubscribe(self.unsubscribe)
                    if self.subscriptions:
                        await client.subscribe([(t, 1) for t in self.subscriptions])
                    self._set_state(True)
                    log.info("MQTT connected to %s:%d as %s", self.host, self.port, self.client_id)
                    delay = self.backoff[0]
                    for m in self.on_connect() if self.on_connect else ():
                        self._send(_as_publish(m))
                    self._drain()
                    await self._receive(client)
            except aiomqtt.MqttError as exc:
                if not self._closing:
                    log.warning("MQTT connection to %s:%d lost: %s (retry in %.1f s)",
                                self.host, self.port, describe(exc), delay)
            finally:
                self._paho = None
                self._client = None
                self._set_state(False)
            if self._closing:
                break
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(self.backoff[1], delay * 2)

    def _on_paho_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        """paho's callback, inside the event loop's socket reader: handle the message
        right here. aiomqtt's iterator would add a queue, a task and an asyncio.wait
        per message (tens of microseconds and a loop hop of latency each)."""
        self.received += 1
        try:
            self.on_message(message.topic, message.payload, bool(message.retain))
        except Exception:
            self.errors += 1
            log.exception("handling %s failed", getattr(message, "topic", "?"))
        if self._queue:
            self._drain()

    def _drain_early(self, client: aiomqtt.Client) -> None:
        queue = client._queue
        while not queue.empty():
            m = queue.get_nowait()
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
            self.received += 1
            try:
                self.on_message(m.topic.value, payload, bool(m.retain))
            except Exception:
                self.errors += 1
                log.exception("handling %s failed", m.topic.value)

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Until the connection ends: messages arrive through _on_paho_message."""
        disconnected = client._disconnected
        await asyncio.wait([disconnected])
        exc = disconnected.exception()
        raise aiomqtt.MqttError(f"disconnected: {exc}" if exc else "disconnected")

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would (the broker
        publishes the last will), and do not reconnect."""
        self._closing = True
        sock = self._paho.socket() if self._paho is not None else None
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)

    async def close(self, final: Iterable[Any] = ()) -> None:
        """Publish ``final`` (e.g. status offline), wait for it to leave, disconnect."""
        self._closing = True
        client = self._client
        if client is not None and self.connected:
            for m in final:
                p = _as_publish(m)
                try:
                    await client.publish(p.topic, p.payload, p.qos, p.retain, timeout=2)
                except Exception as exc:
                    log.warning("could not publish %s on shutdown: %s", p.topic, exc)
            # let paho write whatever is still buffered
            for _ in range(50):
                if self._paho is None or not self._paho.want_write():
                    break
                await asyncio.sleep(0.02)
            try:
                self._paho.disconnect()  # graceful: the broker drops the will
            except Exception as exc:
                log.debug("disconnect: %s", exc)
