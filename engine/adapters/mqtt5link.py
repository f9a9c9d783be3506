"""The server's MQTT link on the ``mqtt5`` codec: one MQTT 5 session that reads every
board-to-server message and publishes everything the server sends. Moves data,
decides nothing.

Why not aiomqtt here: through aiomqtt, paho costs about 190 us of CPU a received
message and a ``send`` system call for every packet it writes, and handles the
broker's PUBACK of every QoS 1 command with another ~100 us; on the bench that was
over a third of the server's CPU (docs/performance.md). ``mqtt5`` (PyPI, by
aiomqtt's maintainer) is a sans-I/O MQTT 5 packet codec written in Rust: about
1 us to read a PUBLISH, 1-2 us to write one. This module is the connection state
machine around it on an ``asyncio.Protocol`` (over asyncio's TLS for ``mqtts://``,
with the same trust as aiomqtt's: :func:`engine.adapters.mqtt.tls_context`).
aiomqtt stays the client for brokers without MQTT 5 (the embedded broker of
``kaiser demo``): :func:`choose` picks.

One connection reads, on purpose, and everything for one board leaves on one
connection, in the order the server made it: a config cannot overtake the command
it enables, nor a command the stop that forbids it. Splitting by direction
(readings on one connection, commands on another) would allow both.

**Lanes.** An MQTT 5 broker says how many QoS 1 messages a client may have
unacknowledged (its receive maximum: Mosquitto 20, EMQX 32, HiveMQ 10). One
connection then publishes at most that many per round trip to the broker and back
through the server's event loop: 10,000-12,000 commands/s on the bench, where the
server's readings/s stopped (docs/performance.md). So when the broker's receive
maximum at the first connection is below :data:`LANES_BELOW`, the link opens ``lanes`` more connections
that only publish (clean sessions, no subscriptions, no will) and spreads the
boards over them and itself by esp id (:func:`lane_of`): every message for one
board still takes one connection, so its order is kept; what is for no single
board (the broadcast stop, the server's status) stays on this one. A lane that
cannot connect at its first attempt is folded back into this connection for good,
its waiting messages first (nothing was sent on it, so nothing is reordered); a
lane that drops later reconnects like this one, its boards' messages waiting for
it (stale ones dropped), as they would for this connection. A late command for a
board from a lane cannot undo a broadcast stop: a stopped board refuses every
command until it is cleared (PROTOCOL.md).

Guarantees (tests/integration/test_mqtt5link.py, real Mosquitto):

- **order**: messages are handed to ``on_batch`` in the order the broker sent
  them, all messages of one socket read in one call (so the rules evaluate
  readings that arrived together once; at light load a read holds one message);
- **QoS 1 in**: a persistent session (clean start off, ``SESSION_EXPIRY``), and a
  message is acknowledged (PUBACK) only after ``on_batch`` returned: a server that
  dies mid-batch gets it again from the broker;
- **QoS 1 out**: every publish of one event-loop turn leaves in one ``write``;
  at most the broker's receive maximum are in flight, the rest wait in order; on
  reconnect the ones not acknowledged are sent again (``duplicate`` when the
  broker kept the session), then what was published meanwhile, except messages
  older than ``max_queue_age`` seconds that are not retained (a stale ON is worse
  than none);
- **last will**: ``server/status`` offline, dropped by the broker at a clean
  :meth:`Mqtt5Link.close`;
- **retained** messages (replayed on subscribe) arrive with ``retained=True``, live
  ones without (``retain_as_published`` off, as MQTT 3.1.1 behaves);
- **reconnect** with exponential backoff (0.5 s .. 30 s); a silent broker (no
  packet for 1.5 keep-alives) counts as gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import mqtt5

from engine.adapters.ingest import Item, item, read_packets
from engine.adapters.mqtt import LinkState, Publish, _as_publish, describe, parse_url, tls_context

log = logging.getLogger("kaiser.mqtt")

#: seconds the broker keeps the session (subscriptions, QoS 1 messages) while the
#: server is away: a restart within it loses nothing
SESSION_EXPIRY = 7 * 86400

OnBatch = Callable[[list[Item]], None]

#: lanes open only when the broker lets a client have fewer than this many QoS 1
#: messages in flight (its receive maximum); above it one connection keeps up
LANES_BELOW = 1000


def lane_of(topic: str, lanes: int) -> int:
    """Which connection publishes ``topic``: 0 (the link's own) .. ``lanes``, by the
    esp id in ``kaiser/{k}/esp/{esp}/...`` (crc32, the same in every run); 0 for
    topics of no single board (the broadcast stop, the server's status)."""
    if lanes <= 0:
        return 0
    parts = topic.split("/", 4)
    if len(parts) < 5 or parts[2] != "esp":
        return 0
    return zlib.crc32(parts[3].encode()) % (lanes + 1)


class NoMqtt5(ConnectionError):
    """The broker takes TCP connections but not MQTT 5 (see ``Mqtt5Link.fallback``)."""


#: Linux: acknowledge at once instead of waiting to piggyback the ACK on our next
#: packet. A server that answers some reads (commands) and not others looks
#: interactive to the kernel, which then delays its ACKs up to 40 ms; a broker
#: without ``set_tcp_nodelay`` (Mosquitto's default) holds its next message back
#: (Nagle) until that ACK comes: p50 30 ms at 1,000 readings/s, measured. The flag
#: does not stick, so it is set again after every read (one cheap system call).
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: Mqtt5Link) -> None:
        self.link = link
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # latency at light load: do not let Nagle hold back a command
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if _QUICKACK is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                    self.sock = sock

    def data_received(self, data: bytes) -> None:
        self.link._feed(data)
        if self.sock is not None:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                self.sock = None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Mqtt5Link(LinkState):
    """Keeps one MQTT 5 session alive and moves messages both ways; the same public
    face as :class:`engine.adapters.mqtt.MqttLink` (``publish``, ``run``, ``close``,
    ``wait_connected``, ``connected`` and the counters).

    ``on_batch(items)`` gets the messages of one socket read, in order, as the ingest
    reader hands them (:func:`engine.adapters.ingest.item`: readings decoded, the rest
    raw); it should not raise (exceptions are logged, counted and the messages still
    acknowledged: a message that makes the handler fail would fail again).
    ``on_connect()`` returns messages to publish on every (re)connect, before
    anything queued. ``will`` is the last will.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        subscriptions: Sequence[str],
        on_batch: OnBatch,
        *,
        will: Any = None,
        on_connect: Callable[[], Iterable[Any]] | None = None,
        on_state: Callable[[bool], None] | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        max_queue: int = 100_000,
        max_queue_age: float = 30.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        fallback: bool = False,
        lanes: int = 0,
        persistent: bool = True,
        unsubscribe: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.host, self.port = parse_url(url)
        self.tls = tls_context(url)
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        #: filters a persistent session may still hold from an earlier run that read
        #: them here; another reader takes them now (the ingest reader process)
        self.unsubscribe = [f for f in unsubscribe if f not in self.subscriptions]
        self.on_batch = on_batch
        self.on_connect = on_connect
        self.will = _as_publish(will) if will is not None else None
        self.username = username or None
        self.password = password or None
        self.keepalive = keepalive
        self.max_queue = max_queue
        self.max_queue_age = max_queue_age
        self.backoff = backoff
        self._init_state(on_state)
        self.received = 0
        self.batches = 0
        self.published = 0
        self.dropped = 0
        self.reconnects = 0
        self.errors = 0
        self._closing = False
        self._transport: asyncio.Transport | None = None
        self._rest = b""
        self._out: list[bytes] = []  # packets of this event-loop turn, written together
        self._flush_due = False
        self._in_read = False
        #: packet id -> (monotonic time published, message): QoS 1 not acknowledged yet
        self._inflight: dict[int, tuple[float, Publish]] = {}
        self._receive_max = 65535
        self._next_pid = 1
        #: (monotonic time published, message): waiting for the connection or for
        #: room in flight, in order
        self._queue: deque[tuple[float, Publish]] = deque()
        self._acks: dict[int, asyncio.Future[Any]] = {}  # CONNACK 0, SUBACK/UNSUBACK by pid
        self._last_in = time.monotonic()
        #: ``run`` gives up with NoMqtt5 (the caller then uses aiomqtt) when a broker
        #: that never answered MQTT 5 takes the TCP connection but not the CONNECT
        #: (closes it, or sends nothing readable within 3 s)
        self.fallback = fallback
        self._refused_connects = 0
        self._spoke_mqtt5 = False
        #: publish-only connections (see the module doc): ``lanes`` at most, opened at
        #: the first CONNACK when the broker's receive maximum is small
        self.lanes = max(0, int(lanes))
        self.persistent = persistent
        self._lanes: list[_Lane | None] = []  # index i: lane_of() == i + 1; None: folded back
        self._lanes_decided = False
        self._lane_tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ publish
    def publish(self, msg: Any) -> None:
        """Send ``msg`` (Publish or (topic, payload, qos, retain)) now, or when the
        connection (or room in flight) is back. Never blocks, never raises."""
        m = _as_publish(msg)
        if self._lanes:
            conn = self._connection_for(m.topic)
            if conn is not self:
                conn.publish(m)
                return
        if self.connected and not self._queue and self._room():
            self._send(time.monotonic(), m)
            return
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((time.monotonic(), m))

    def _room(self) -> bool:
        return len(self._inflight) < self._receive_max

    def _pid(self) -> int:
        pid = self._next_pid
        while pid in self._inflight or pid in self._acks:
            pid = pid % 65535 + 1
        self._next_pid = pid % 65535 + 1
        return pid

    def _send(self, at: float, m: Publish, duplicate: bool = False, pid: int | None = None) -> None:
        qos = mqtt5.QoS.AT_LEAST_ONCE if m.qos else mqtt5.QoS.AT_MOST_ONCE
        if m.qos:
            if pid is None:
                pid = self._pid()
            self._inflight[pid] = (at, m)
        self._write(mqtt5.PublishPacket(m.topic, m.payload, qos=qos, retain=m.retain, packet_id=pid if m.qos else None,
                                        duplicate=duplicate).write())
        self.published += 1

    def _write(self, packet: bytes) -> None:
        self._out.append(packet)
        if not self._in_read and not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        t = self._transport
        if out and t is not None and not t.is_closing():
            t.write(b"".join(out) if len(out) > 1 else out[0])

    def _drain(self) -> None:
        """Send what waits, oldest first, as far as the broker lets us."""
        now = time.monotonic()
        queue = self._queue
        while queue and self.connected and self._room():
            at, m = queue.popleft()
            if now - at > self.max_queue_age and not m.retain:
                self.dropped += 1
                continue
            self._send(at, m)

    # ------------------------------------------------------------------ reading
    def _feed(self, data: bytes) -> None:
        self._last_in = time.monotonic()
        if self._rest:
            data = self._rest + data
        packets, used, error = read_packets(data)
        self._rest = data[used:] if used < len(data) else b""
        publish = mqtt5.PublishPacket
        batch: list[Item] = []
        pids: list[int] = []
        now = time.time()
        self._in_read = True
        # what the handler publishes on the lanes leaves with this read's own write, as
        # on this connection (not one event-loop turn later)
        lanes = [lane for lane in self._lanes if lane is not None] if self._lanes else ()
        for lane in lanes:
            lane._in_read = True
        try:
            for packet in packets:
                if packet.__class__ is publish:
                    batch.append(item(packet.topic, packet.payload, packet.retain, now, plain=False))
                    if packet.packet_id is not None:
                        pids.append(packet.packet_id)
                else:
                    self._control(packet)
            if error is not None:  # drop the connection, reconnect
                log.error("unreadable packet from the broker: %s", error)
                if self._transport is not None:
                    self._transport.close()
            if batch:
                self.received += len(batch)
                self.batches += 1
                try:
                    self.on_batch(batch)
                except Exception:
                    self.errors += 1
                    log.exception("handling %d MQTT message(s) failed", len(batch))
            if pids:  # acknowledged once handled (see the module doc)
                ack = mqtt5.PubAckPacket
                self._out.extend(ack(pid).write() for pid in pids)
        finally:
            self._in_read = False
            self._flush()
            for lane in lanes:
                lane._in_read = False
                lane._flush()

    def _control(self, p: Any) -> None:
        m = mqtt5
        cls = p.__class__
        if cls is m.PubAckPacket:
            if self._inflight.pop(p.packet_id, None) is not None and self._queue:
                self._drain()
            if int(p.reason_code) >= 0x80:
                log.warning("the broker refused a message: %s", p.reason_code.name)
        elif cls is m.ConnAckPacket:
            self._resolve(0, p)
        elif cls in (m.SubAckPacket, m.UnsubAckPacket):
            self._resolve(p.packet_id, p)
        elif cls is m.DisconnectPacket:
            log.warning("the broker disconnected Kaiser: %s %s", p.reason_code.name, p.reason_str or "")
            if self._transport is not None:
                self._transport.close()
        elif cls is m.PubRelPacket:  # QoS 2 is not subscribed to; complete it anyway
            self._out.append(m.PubCompPacket(p.packet_id).write())
        # PINGRESP and anything else: the arrival itself (_last_in) is what counts

    def _resolve(self, key: int, p: Any) -> None:
        fut = self._acks.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(p)

    async def _request(self, key: int, packet: bytes, lost: asyncio.Future[Any], timeout: float = 10.0) -> Any:
        """Send ``packet`` and wait (``timeout`` s at most) for its answer, or the end of the connection."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[key] = fut
        self._write(packet)
        try:
            await asyncio.wait([fut, lost], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if fut.done():
                return fut.result()
            if lost.done():
                raise ConnectionError("the broker closed the connection")
            raise TimeoutError(f"no answer from the broker within {timeout:g} s")
        finally:
            self._acks.pop(key, None)

    # ------------------------------------------------------------------ session
    async def run(self) -> None:
        """Connect, subscribe, deliver messages; reconnect with backoff until close()."""
        delay = self.backoff[0]
        while not self._closing:
            try:
                await self._session()
                delay = self.backoff[0]
            except (OSError, TimeoutError, ConnectionError) as exc:
                if not self._closing and self._give_up(exc):
                    return
                if not self._closing:
                    log.warning("MQTT connection to %s:%d lost: %s (retry in %.1f s)%s",
                                self.host, self.port, describe(exc), delay, self._who())
            finally:
                self._set_state(False)
                self._transport = None
            if self._closing:
                break
            self.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(self.backoff[1], delay * 2)

    def _who(self) -> str:
        """Said after a lost connection's warning: nothing for the main connection."""
        return ""

    def _give_up(self, exc: BaseException) -> bool:
        """After a failed connection: True to stop reconnecting. Raises NoMqtt5 for a
        broker that never answered MQTT 5 (``fallback``)."""
        if self.fallback and not self._spoke_mqtt5 and self._refused_connects:
            raise NoMqtt5(f"the broker at {self.host}:{self.port} answers, but not to MQTT 5 "
                          f"({describe(exc)})") from exc
        return False

    def _connect_packet(self) -> bytes:
        will = None
        if self.will is not None:
            w = self.will
            will = mqtt5.Will(w.topic, payload=w.payload, retain=w.retain,
                              qos=mqtt5.QoS.AT_LEAST_ONCE if w.qos else mqtt5.QoS.AT_MOST_ONCE)
        pw = self.password
        return mqtt5.ConnectPacket(
            self.client_id, username=self.username, password=pw.encode() if pw else None,
            clean_start=not self.persistent, will=will, keep_alive=int(self.keepalive),
            session_expiry_interval=SESSION_EXPIRY if self.persistent else 0).write()

    async def _session(self) -> None:
        """One connection: connect, subscribe, resend, read until it ends."""
        loop = asyncio.get_running_loop()
        # a TLS handshake that fails (an untrusted certificate) is an OSError here,
        # before any CONNECT: never taken for a broker without MQTT 5
        transport, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=self.tls), 10)
        self._transport = transport
        self._rest, self._out, self._flush_due = b"", [], False
        try:
            try:
                # a broker that spoke MQTT 5 before gets the usual 10 s
                ack = await self._request(0, self._connect_packet(), proto.lost, 10.0 if self._spoke_mqtt5 else 3.0)
            except (ConnectionError, TimeoutError):
                # a broker without MQTT 5 (MQTT 3.1.1 only: amqtt, old Mosquitto) drops
                # the CONNECT or answers what mqtt5 cannot read
                self._refused_connects += 1
                raise
            self._refused_connects = 0
            self._spoke_mqtt5 = True
            if ack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
                raise ConnectionError(f"broker refused the connection: {ack.reason_code.name}")
            self._receive_max = max(1, int(ack.receive_max or 65535))
            if not self._lanes_decided:
                # decided once, at the first connection: opened later, a board's queued
                # messages would go on a lane while older ones are resent on this one
                self._lanes_decided = True
                if self.lanes and self._receive_max < LANES_BELOW:
                    self._open_lanes()
            if self.unsubscribe and ack.session_present:
                pid = self._pid()
                await self._request(pid, mqtt5.UnsubscribePacket(pid, self.unsubscribe).write(), proto.lost)
            if self.subscriptions:
                pid = self._pid()
                sub = await self._request(pid, mqtt5.SubscribePacket(pid, [
                    mqtt5.TopicFilter(f, max_qos=mqtt5.QoS.AT_LEAST_ONCE, retain_as_published=False)
                    for f in self.subscriptions]).write(), proto.lost)
                refused = [f for f, code in zip(self.subscriptions, sub.reason_codes, strict=False)
                           if int(code) >= 0x80]
                if refused:
                    log.error("broker refused subscriptions: %s", ", ".join(refused))
            self._resend(bool(ack.session_present),
                         [_as_publish(m) for m in (self.on_connect() if self.on_connect else ())])
            self._set_state(True)
            log.info("MQTT connected to %s:%d as %s (MQTT 5, session present: %s)",
                     self.host, self.port, self.client_id, ack.session_present)
            self._drain()
            await self._keep_alive(proto)
        finally:
            if not transport.is_closing():
                transport.close()

    def _resend(self, session_present: bool, first: Iterable[Publish] = ()) -> None:
        """Messages in flight when the last connection ended go again first (as
        duplicates when the broker kept the session), unless stale, then ``first``
        (the ``on_connect`` messages), then what was queued: all in order and never
        more in flight than the broker's receive maximum (what does not fit waits at
        the head of the queue, in order)."""
        inflight, self._inflight = self._inflight, {}
        now = time.monotonic()
        held: list[tuple[float, Publish]] = []
        for pid, (at, m) in sorted(inflight.items(), key=lambda kv: kv[1][0]):
            if now - at > self.max_queue_age and not m.retain:
                self.dropped += 1
            elif not held and self._room():
                self._send(at, m, duplicate=session_present, pid=pid if session_present else None)
            else:
                held.append((at, m))
        for m in first:
            if not held and self._room():
                self._send(now, m)
            else:
                held.append((now, m))
        self._queue.extendleft(reversed(held))

    async def _keep_alive(self, proto: _Protocol) -> None:
        keepalive = max(1, int(self.keepalive))
        ping = mqtt5.PingReqPacket().write()
        while not proto.lost.done():
            await asyncio.wait([proto.lost], timeout=keepalive / 2)
            if proto.lost.done():
                break
            if time.monotonic() - self._last_in > keepalive * 1.5:
                raise TimeoutError(f"no answer from the broker for {keepalive * 1.5:.0f} s")
            self._write(ping)
        exc = proto.lost.result()
        raise ConnectionError(f"disconnected: {exc}" if exc else "disconnected")

    def pending(self) -> list[Publish]:
        """What was published and not acknowledged or not sent yet, oldest first
        (handed to the aiomqtt link that takes over after NoMqtt5)."""
        waiting = sorted([*self._inflight.values(), *self._queue,
                          *(am for lane in self._lanes if lane is not None
                            for am in (*lane._inflight.values(), *lane._queue))], key=lambda am: am[0])
        return [m for _at, m in waiting]

    # ------------------------------------------------------------------ lanes
    def _connection_for(self, topic: str) -> Mqtt5Link:
        """This connection or the lane that publishes ``topic`` (:func:`lane_of`)."""
        i = lane_of(topic, len(self._lanes))
        lane = self._lanes[i - 1] if i else None
        return self if lane is None else lane

    def _open_lanes(self) -> None:
        """Open the publish-only lanes and hand each the waiting messages of its
        boards (nothing of theirs was sent yet: their order is kept)."""
        self._lanes = [_Lane(self, i) for i in range(1, self.lanes + 1)]
        keep: deque[tuple[float, Publish]] = deque()
        for at, m in self._queue:
            conn = self._connection_for(m.topic)
            (keep if conn is self else conn._queue).append((at, m))
        self._queue = keep
        self._lane_tasks = [asyncio.create_task(lane.run(), name=f"kaiser-mqtt-lane{lane.index}")
                            for lane in self._lanes if lane is not None]
        log.info("the broker takes %d QoS 1 messages in flight a connection: publishing over %d more "
                 "connection(s), boards spread by esp id", self._receive_max, self.lanes)

    def _fold(self, lane: _Lane) -> None:
        """A lane that never connected: its boards go back to this connection for
        good, its waiting messages first."""
        if self._lanes[lane.index - 1] is not lane:
            return
        self._lanes[lane.index - 1] = None
        self._queue.extend(lane._queue)
        lane._queue.clear()
        self._drain()

    async def wait_lanes(self, timeout: float) -> bool:
        """True once every open lane is connected (or folded back) within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            n, up = self.lanes_status()
            if up == n:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    def lanes_status(self) -> tuple[int, int]:
        """(lanes open, lanes connected)."""
        open_ = [lane for lane in self._lanes if lane is not None]
        return len(open_), sum(1 for lane in open_ if lane.connected)

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would (the broker
        publishes the last will), and do not reconnect."""
        self._closing = True
        for lane in self._lanes:
            if lane is not None:
                lane.abort()
        if self._transport is not None:
            self._transport.abort()

    async def close(self, final: Iterable[Any] = ()) -> None:
        """Publish ``final`` (e.g. status offline), wait up to 2 s for everything in
        flight to be acknowledged, disconnect cleanly (the broker drops the will)."""
        self._closing = True
        lanes = [lane for lane in self._lanes if lane is not None]
        if lanes:  # their boards' last messages first, then this connection's
            await asyncio.gather(*(lane.close() for lane in lanes), return_exceptions=True)
        for t in self._lane_tasks:
            t.cancel()
        transport = self._transport
        if transport is not None and self.connected and not transport.is_closing():
            for m in final:
                self._send(time.monotonic(), _as_publish(m))
            self._flush()
            deadline = time.monotonic() + 2.0
            while self._inflight and time.monotonic() < deadline and not transport.is_closing():
                await asyncio.sleep(0.01)
            if not transport.is_closing():
                transport.write(mqtt5.DisconnectPacket().write())
                transport.close()
        self._set_state(False)


class _Lane(Mqtt5Link):
    """A publish-only connection of a :class:`Mqtt5Link` (see the module doc):
    clean session, no subscriptions, no will; ``{client_id}-lane{index}``."""

    def __init__(self, main: Mqtt5Link, index: int) -> None:
        super().__init__(main.url, f"{main.client_id}-lane{index}", [], _ignore,
                         username=main.username, password=main.password, keepalive=main.keepalive,
                         max_queue=main.max_queue, max_queue_age=main.max_queue_age, backoff=main.backoff,
                         persistent=False)
        self.tls = main.tls  # one TLS context for every connection
        self.main = main
        self.index = index

    def _who(self) -> str:
        return f" (publish lane {self.index}, {self.client_id})"

    def _give_up(self, exc: BaseException) -> bool:
        """A lane that never connected is folded back into the main connection."""
        if self._spoke_mqtt5:
            return False
        log.warning("MQTT lane %d (%s) could not connect: %s; its boards are published on the main "
                    "connection", self.index, self.client_id, describe(exc))
        self.main._fold(self)
        return True


def _ignore(_batch: list[Item]) -> None:
    """Lanes subscribe to nothing."""


def choose(url: str, mode: str) -> str:
    """Which client reads the broker: ``mqtt5`` (this module, the default, also for
    TLS), ``process`` (the ingest reader process, engine/adapters/ingest.py, reads;
    this module only publishes; not over TLS) or ``aiomqtt``."""
    mode = (mode or "auto").strip().lower()
    if mode == "process" and url.startswith("mqtts://"):
        log.warning("MQTT client process does not speak TLS yet: using mqtt5")
        return "mqtt5"
    if mode in ("auto", "mqtt5"):
        return "mqtt5"
    if mode in ("process", "aiomqtt"):
        return mode
    log.warning("MQTT client %r unknown (auto, mqtt5, process or aiomqtt): using mqtt5", mode)
    return "mqtt5"
