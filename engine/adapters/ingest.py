"""The ingest reader: a child process that reads every board-to-server message from
the broker and hands them to the server in batches. Moves data, decides nothing.

Why a second reader: through aiomqtt, paho costs about 190 us of CPU per received
message, so one ``kaiser run`` process could take about 5,000 messages/s and spent
most of its time outside the rules (docs/performance.md). This reader speaks MQTT
with ``mqtt5`` (a sans-I/O MQTT 5 packet codec written in Rust by aiomqtt's
maintainer: about 1 us to parse a PUBLISH), decodes the firmware's JSON with
``engine.codec`` in its own process, on the second core, and sends the server
batches of decoded readings (one batch per socket read, so one reading alone at
light load, hundreds under load; the batches the server finds waiting in one
read of the pipe go to the rules as one). The server's own MQTT 5 link
(engine/adapters/mqtt5link.py, with no subscriptions) publishes everything the
server sends (commands, configs, acks, ``server/status`` and its will); aiomqtt
only when the broker refuses MQTT 5.

Guarantees:

- **order**: one connection reads every topic the server subscribes to, and the
  server handles the batches in the order they were read, so a board's messages
  keep their order (readings, heartbeats and statuses alike). MQTT shared
  subscriptions (``$share/...``) were not used: Mosquitto hands each message to
  the next subscriber round robin, which splits one board's readings over
  several readers and can reorder them; one reader sustains far more than the
  server's rule pipeline can take (docs/performance.md).
- **QoS 1 is not lost**: a persistent session (clean start off, session expiry
  ``SESSION_EXPIRY``), and a message is acknowledged to the broker (PUBACK) only
  after the server has handled the batch that carried it (the server's notes
  are gathered for ``ACK_DELAY``). When the reader dies,
  the server starts a new one with the same client id; the broker sends it every
  message not acknowledged yet. A message whose acknowledgement was lost with the
  reader arrives a second time (QoS 1 is "at least once").
- **retained** messages (replayed by the broker on subscribe) carry
  ``retained=True`` exactly as with MQTT 3.1.1 (``retain_as_published`` off).
- **reconnect**: to the broker with exponential backoff (0.5 s .. 30 s); the
  server restarts a reader that exits, with the same backoff.
- **backpressure**: with ``MAX_UNACKED`` batches not yet handled by the server,
  the reader stops reading the broker until the server catches up.

Wire between the processes: frames of ``!IB`` (body length, kind) + body. Reader
to server: ``B`` a batch, ``marshal`` of ``(batch_id, items)``; ``S`` its broker
state, ``b"1"`` or ``b"0"``. Server to reader: ``C`` the configuration
(``marshal`` dict, once), ``A`` the last batch id handled (``!Q``). Items are
plain tuples: ``("r", topic, esp_id, retained, values)`` for a decoded sensor message
(``values``: the fields of each ``codec.SensorValue``) and ``("m", topic,
payload, retained)`` for every other message, which the server decodes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from engine import codec
from engine.adapters.mqtt import LinkState

log = logging.getLogger("kaiser.ingest")

#: seconds the broker keeps the reader's session (subscriptions, QoS 1 messages)
#: while no reader is connected: a restart of Kaiser within it loses nothing
SESSION_EXPIRY = 7 * 86400
#: batches sent to the server and not yet handled before the reader stops reading
MAX_UNACKED = 256
#: seconds the server gathers "handled" notes before it sends one: a write and a
#: wake-up of the reader saved per message at light load; QoS 1 messages wait that
#: much longer for their PUBACK, which only the broker notices
ACK_DELAY = 0.005
_HDR = struct.Struct("!IB")
_ACK = struct.Struct("!Q")
_BATCH, _STATE, _CONFIG, _HANDLED = 0x42, 0x53, 0x43, 0x41  # B S C A

Item = tuple[Any, ...]
OnBatch = Callable[[list[Item]], None]


def _frame(kind: int, body: bytes) -> bytes:
    return _HDR.pack(len(body), kind) + body


class _Frames:
    """Splits a byte stream into (kind, body) frames."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.rest + data if self.rest else data
        out: list[tuple[int, bytes]] = []
        pos, n, size = 0, len(buf), _HDR.size
        while n - pos >= size:
            length, kind = _HDR.unpack_from(buf, pos)
            end = pos + size + length
            if end > n:
                break
            out.append((kind, buf[pos + size:end]))
            pos = end
        self.rest = buf[pos:] if pos < n else b""
        return out


def read_packets(data: bytes) -> tuple[list[Any], int, Exception | None]:
    """The whole MQTT 5 packets (``mqtt5``) at the start of ``data``, the bytes they
    took (what follows is an incomplete packet), and the error of a packet mqtt5
    refuses (the packets before it are returned; the connection is beyond saving)."""
    import mqtt5

    read = mqtt5.read
    view = memoryview(data)
    out: list[Any] = []
    pos, n = 0, len(data)
    try:
        while pos < n:
            try:
                packet, used = read(view[pos:])
            except IndexError:  # an incomplete packet: wait for the rest
                break
            pos += used
            out.append(packet)
    except Exception as exc:
        return out, n, exc
    finally:
        view.release()
    return out, pos, None


def item(topic: str, payload: bytes, retained: bool, received_at: float, plain: bool = True) -> Item:
    """One message as ``Server.on_ingest`` takes it: decoded when it is a reading.

    ``plain``: the values as plain tuples, what ``marshal`` takes (the reader
    process); the MQTT 5 link, in the server's own process, passes False and
    hands over the ``codec.SensorValue`` themselves."""
    found = codec.sensor_values(topic, payload, received_at=received_at)
    if found is None:
        return ("m", topic, payload, retained)
    esp, values = found
    return ("r", topic, esp, bool(retained), tuple(tuple(v) for v in values) if plain else values)


# ============================================================================
# the server's side


class _ChildLink(asyncio.Protocol):
    def __init__(self, owner: Ingest) -> None:
        self.owner = owner
        self.frames = _Frames()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.handled = 0  # the last batch handled
        self._note: asyncio.TimerHandle | None = None

    def _send_note(self) -> None:
        self._note = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(_HANDLED, _ACK.pack(self.handled)))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        last = 0
        owner = self.owner
        # the batches of one read are handled as one: when the server is busy, the
        # reader's batches queue up, and the rules then take them in one step (the
        # costs of a step and of a write to the broker are paid once, not per batch)
        merged: list[Item] = []
        for kind, body in self.frames.feed(data):
            if kind == _BATCH:
                last, items = marshal.loads(body)
                owner.batches += 1
                owner.received += len(items)
                merged.extend(items)
            elif kind == _STATE:
                self._hand(merged)
                owner._set_state(body == b"1")
        self._hand(merged)
        if last:
            # one note for everything handled within ACK_DELAY
            self.handled = last
            if self._note is None:
                self._note = self.loop.call_later(ACK_DELAY, self._send_note)

    def _hand(self, items: list[Item]) -> None:
        if not items:
            return
        try:
            self.owner.on_batch(items[:])
        except Exception:  # the handler should not raise; never stop reading
            log.exception("handling an ingest batch failed")
        items.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._note is not None:
            self._note.cancel()
            self._note = None
        if not self.closed.done():
            self.closed.set_result(None)


class Ingest(LinkState):
    """Runs the reader process and hands its batches to ``on_batch(items)`` on the
    event loop, in order; restarts the reader when it exits.

    ``subscriptions``: the topic filters to read (QoS 1). ``client_id``: the
    reader's own MQTT client id (its persistent session).
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        subscriptions: Sequence[str],
        on_batch: OnBatch,
        *,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_batch = on_batch
        self.username = username or None
        self.password = password or None
        self.keepalive = keepalive
        self.backoff = backoff
        self.received = 0
        self.batches = 0
        self.restarts = 0
        self.pid: int | None = None
        self._closing = False
        self._proc: asyncio.subprocess.Process | None = None
        self._link: _ChildLink | None = None
        self._init_state()

    async def run(self) -> None:
        """Start the reader; start a new one whenever it exits, until close()."""
        delay = self.backoff[0]
        while not self._closing:
            started = time.monotonic()
            try:
                await self._run_once()
            except OSError as exc:
                log.error("cannot start the ingest reader: %s", exc)
            self._set_state(False)
            if self._closing:
                break
            self.restarts += 1
            if time.monotonic() - started > 60:
                delay = self.backoff[0]
            log.warning("ingest reader exited; starting a new one in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(self.backoff[1], delay * 2)

    async def _run_once(self) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        try:
            # the reader imports this very package, wherever the server found it
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.adapters.ingest", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path})
        finally:
            theirs.close()
        self.pid = self._proc.pid
        try:
            _t, link = await loop.connect_accepted_socket(lambda: _ChildLink(self), mine)
        except BaseException:
            mine.close()
            raise
        self._link = link
        assert link.transport is not None
        cfg = {"host": self.host, "port": self.port, "client_id": self.client_id,
               "subscriptions": self.subscriptions, "username": self.username, "password": self.password,
               "keepalive": self.keepalive, "log_level": logging.getLogger("kaiser").getEffectiveLevel()}
        link.transport.write(_frame(_CONFIG, marshal.dumps(cfg)))
        proc = self._proc
        waiter: asyncio.Future[Any] = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait([waiter, link.closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(waiter), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await waiter
            self._link = None
            self._proc = None
        if not self._closing:
            log.warning("ingest reader %d ended with exit code %s", proc.pid, proc.returncode)

    async def close(self) -> None:
        """Stop the reader: it disconnects cleanly, its session stays at the broker."""
        self._closing = True
        link, proc = self._link, self._proc
        if link is not None and link.transport is not None:
            link.transport.close()  # the reader sees the end of its pipe and exits
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self._set_state(False)


# ============================================================================
# the reader's side (the child process)


class _Broker(asyncio.Protocol):
    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class _Server(asyncio.Protocol):
    """The reader's end of the pipe to the server."""

    def __init__(self) -> None:
        self.reader: _Reader | None = None
        self.frames = _Frames()
        self.config: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        for kind, body in self.frames.feed(data):
            if kind == _HANDLED and self.reader is not None:
                self.reader.handled(_ACK.unpack(body)[0])
            elif kind == _CONFIG and not self.config.done():
                self.config.set_result(marshal.loads(body))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


class _Reader:
    """MQTT 5 on ``mqtt5``: connect, subscribe, read, acknowledge what the server
    handled, keep the connection alive."""

    def __init__(self, server: asyncio.Transport) -> None:
        import mqtt5

        self.mqtt5 = mqtt5
        self.server = server
        self.broker: asyncio.Transport | None = None
        self.rest = b""
        self.batch: list[Item] = []
        self.pids: list[int] = []
        self.next_batch = 1
        self.handled_upto = 0
        self.unacked: dict[int, list[int]] = {}  # batch id -> packet ids to PUBACK once handled
        self.paused = False
        self.last_in = time.monotonic()
        self.connack: asyncio.Future[Any] | None = None
        self.suback: asyncio.Future[Any] | None = None

    # ------------------------------------------------------------- reading
    def feed(self, data: bytes) -> None:
        self.last_in = time.monotonic()
        if self.rest:
            data = self.rest + data
        packets, used, error = read_packets(data)
        self.rest = data[used:] if used < len(data) else b""
        publish = self.mqtt5.PublishPacket
        now = time.time()
        for packet in packets:
            if packet.__class__ is publish:
                self._publish(packet, now)
            else:
                self._control(packet)
        if error is not None:  # drop the connection, reconnect
            log.error("unreadable packet from the broker: %s", error)
            if self.broker is not None:
                self.broker.close()
        self._flush()

    def _publish(self, p: Any, now: float) -> None:
        self.batch.append(item(p.topic, p.payload, p.retain, now))
        pid = p.packet_id  # None at QoS 0 (mqtt5's QoS enum is always true)
        if pid is not None:
            self.pids.append(pid)

    def _control(self, p: Any) -> None:
        m = self.mqtt5
        if isinstance(p, m.ConnAckPacket):
            if self.connack is not None and not self.connack.done():
                self.connack.set_result(p)
        elif isinstance(p, m.SubAckPacket):
            if self.suback is not None and not self.suback.done():
                self.suback.set_result(p)
        elif isinstance(p, m.DisconnectPacket):
            log.warning("the broker disconnected the ingest reader: %s %s", p.reason_code.name, p.reason_str or "")
            if self.broker is not None:
                self.broker.close()
        # PINGRESP and anything else: the arrival itself (last_in) is what counts

    def _flush(self) -> None:
        if not self.batch:
            return
        bid = self.next_batch
        self.next_batch = bid + 1
        self.server.write(_frame(_BATCH, marshal.dumps((bid, self.batch))))
        self.batch = []
        if self.pids:
            self.unacked[bid] = self.pids
            self.pids = []
        if bid - self.handled_upto >= MAX_UNACKED and not self.paused and self.broker is not None:
            self.paused = True
            self.broker.pause_reading()

    def handled(self, upto: int) -> None:
        """The server handled every batch up to ``upto``: acknowledge their messages."""
        self.handled_upto = max(self.handled_upto, upto)
        pids: list[int] = []
        unacked = self.unacked
        while unacked:
            first = next(iter(unacked))
            if first > upto:
                break
            pids.extend(unacked.pop(first))
        if pids and self.broker is not None:
            ack = self.mqtt5.PubAckPacket
            self.broker.write(b"".join([ack(pid).write() for pid in pids]))
        if self.paused and self.next_batch - 1 - self.handled_upto < MAX_UNACKED // 2:
            self.paused = False
            if self.broker is not None:
                self.broker.resume_reading()

    # ------------------------------------------------------------- session
    async def session(self, cfg: dict[str, Any]) -> None:
        """One connection: connect, subscribe, report, read until it ends."""
        m = self.mqtt5
        loop = asyncio.get_running_loop()
        transport, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _Broker(self), cfg["host"], cfg["port"]), 10)
        self.broker = transport
        self.rest, self.batch, self.pids, self.unacked, self.paused = b"", [], [], {}, False
        try:
            self.connack = loop.create_future()
            pw = cfg.get("password")
            transport.write(m.ConnectPacket(
                cfg["client_id"], username=cfg.get("username"), password=pw.encode() if pw else None,
                clean_start=False, keep_alive=int(cfg["keepalive"]), session_expiry_interval=SESSION_EXPIRY,
            ).write())
            ack = await asyncio.wait_for(self.connack, 10)
            if ack.reason_code != m.ConnAckReasonCode.SUCCESS:
                raise ConnectionError(f"broker refused the connection: {ack.reason_code.name}")
            self.suback = loop.create_future()
            transport.write(m.SubscribePacket(1, [
                m.TopicFilter(f, max_qos=m.QoS.AT_LEAST_ONCE, retain_as_published=False)
                for f in cfg["subscriptions"]]).write())
            sub = await asyncio.wait_for(self.suback, 10)
            refused = [f for f, code in zip(cfg["subscriptions"], sub.reason_codes, strict=False) if int(code) >= 0x80]
            if refused:
                log.error("broker refused subscriptions: %s", ", ".join(refused))
            self.server.write(_frame(_STATE, b"1"))
            log.info("ingest reader connected to %s:%d as %s (session present: %s)",
                     cfg["host"], cfg["port"], cfg["client_id"], ack.session_present)
            keepalive = max(1, int(cfg["keepalive"]))
            ping = m.PingReqPacket().write()
            while not proto.lost.done():
                await asyncio.wait([proto.lost], timeout=keepalive / 2)
                if proto.lost.done():
                    break
                if time.monotonic() - self.last_in > keepalive * 1.5:
                    log.warning("no answer from the broker for %.0f s: reconnecting", keepalive * 1.5)
                    break
                transport.write(ping)
        finally:
            self.server.write(_frame(_STATE, b"0"))
            self.broker = None
            if not transport.is_closing():
                with contextlib.suppress(Exception):
                    transport.write(m.DisconnectPacket().write())
                transport.close()


async def _child(fd: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    transport, server = await loop.connect_accepted_socket(_Server, sock)
    assert isinstance(transport, asyncio.Transport)
    reader = server.reader = _Reader(transport)
    cfg = await asyncio.wait_for(server.config, 30)
    logging.basicConfig(level=cfg.get("log_level") or logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    delay = 0.5
    while not server.gone.done():
        session = asyncio.ensure_future(reader.session(cfg))
        await asyncio.wait([session, server.gone], return_when=asyncio.FIRST_COMPLETED)
        if server.gone.done():
            session.cancel()
            with contextlib.suppress(BaseException):
                await session
            break
        exc = session.exception()
        if exc is None:
            delay = 0.5
        else:
            log.warning("ingest reader: broker %s:%d: %s (retry in %.1f s)", cfg["host"], cfg["port"], exc, delay)
        await asyncio.wait([server.gone], timeout=delay)
        delay = min(30.0, delay * 2)


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.adapters.ingest FD``: run the reader on the socket FD."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m engine.adapters.ingest FD (started by kaiser run)", file=sys.stderr)
        return 2
    import gc

    gc.freeze()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_child(int(args[0])))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
