"""Firmware twins on a real broker (aiomqtt). Moves data, decides nothing.

Each twin gets its own MQTT connection, as a real board has: client id = its
esp id, a clean session, its own last will (registered at connect with the
payload the firmware builds), and exactly the subscriptions (topic filter and
QoS) the firmware makes right now. So the broker does what it does for real
boards: retained messages are replayed to each board at its (re)subscribe, QoS
is downgraded to the board's subscription QoS, and a legacy board that
reconnected without resubscribing receives nothing.

A board that "crashes" (:meth:`TwinFleet.reboot`, :meth:`TwinFleet.drop`) loses
its connection without a DISCONNECT; the fleet publishes the board's last will on
the broker's behalf (aiomqtt can only close cleanly).

Time: ``now`` (default ``time.time``) stamps every message the boards receive.
With ``auto_tick=True`` the fleet ticks the boards whenever one is due; with
``auto_tick=False`` nothing happens between messages until a test calls
``await fleet.advance(t)`` (virtual time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import aiomqtt

from engine.adapters.mqtt import parse_url
from engine.codec import Outgoing
from engine.firmware.board import Board

log = logging.getLogger("kaiser.firmware")


class TwinFleet:
    """A set of firmware twins connected to the broker at ``url``."""

    def __init__(self, boards: Iterable[Board], url: str, *, now: Callable[[], float] = time.time,
                 auto_tick: bool = True, max_sleep: float = 1.0) -> None:
        self.boards: dict[str, Board] = {b.esp_id: b for b in boards}
        self.url = url
        self.now = now
        self.auto_tick = auto_tick
        self.max_sleep = max_sleep
        self.sent = 0
        self.received = 0
        self.taps: list[Callable[[Board, Outgoing], None]] = []
        self._clients: dict[str, aiomqtt.Client] = {}
        self._sessions: dict[str, asyncio.Task[None]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Connect every board, route messages, tick (unless ``auto_tick`` is off)
        until ``stop`` is set; then close every connection."""
        await self.start()
        ticker = asyncio.create_task(self._ticker(stop)) if self.auto_tick else None
        try:
            await stop.wait()
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            await self.close()

    async def start(self) -> None:
        """Connect every board that is not connected yet (waits until each has
        subscribed and published its connect messages)."""
        for esp in self.boards:
            if esp not in self._sessions:
                await self.connect(esp)

    async def close(self) -> None:
        for esp in list(self._sessions):
            await self._end_session(esp)

    async def connect(self, esp_id: str) -> None:
        """(Re)connect one board: new MQTT session, its will, its subscriptions."""
        await self._end_session(esp_id)
        board = self.boards[esp_id]
        out = board.connect(self.now())
        await self._open(board, out)

    async def drop(self, esp_id: str) -> None:
        """The board loses the broker (no DISCONNECT): the broker sends its will."""
        board = self.boards[esp_id]
        will = board.will()
        await self._end_session(esp_id)
        board.disconnect(self.now())
        await self._publish_raw(will)

    async def reboot(self, esp_id: str) -> None:
        """Power-cycle one board: its will goes out, it boots and reconnects."""
        board = self.boards[esp_id]
        will = board.will() if board.connected else None
        await self._end_session(esp_id)
        if will is not None:
            await self._publish_raw(will)
        out = board.reboot(self.now())
        if board.connected:
            await self._open(board, out)

    async def advance(self, now: float | None = None) -> None:
        """Run every board's due work up to ``now`` (default: the clock) and publish."""
        t = self.now() if now is None else now
        async with self._lock:
            for b in self.boards.values():
                await self.emit(b, b.tick(t))

    async def emit(self, board: Board, messages: Iterable[Outgoing]) -> None:
        """Publish what ``board`` produced, on its own connection."""
        client = self._clients.get(board.esp_id)
        for m in messages:
            for tap in self.taps:
                tap(board, m)
            if client is None:
                continue
            try:
                await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                self.sent += 1
            except aiomqtt.MqttError as exc:
                log.warning("twin %s could not publish %s: %s", board.esp_id, m.topic, exc)
        self._wake.set()

    # -------------------------------------------------------------- sessions
    async def _open(self, board: Board, connect_out: list[Outgoing]) -> None:
        ready = asyncio.Event()
        self._ready[board.esp_id] = ready
        task = asyncio.create_task(self._session(board, connect_out, ready))
        self._sessions[board.esp_id] = task
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            waiter.cancel()
            task.result()  # raises the connection error

    async def _session(self, board: Board, connect_out: list[Outgoing], ready: asyncio.Event) -> None:
        host, port = parse_url(self.url)
        w = board.will()
        will = aiomqtt.Will(w.topic, w.payload, w.qos, w.retain)
        async with aiomqtt.Client(host, port, identifier=board.esp_id, will=will, clean_session=True,
                                  keepalive=60) as client:
            self._clients[board.esp_id] = client
            try:
                for flt, qos in board.subscriptions():
                    await client.subscribe(flt, qos=qos)
                await self.emit(board, connect_out)
                ready.set()
                async for m in client.messages:
                    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                    self.received += 1
                    async with self._lock:
                        out = board.receive(m.topic.value, payload, self.now(), retained=bool(m.retain),
                                            qos=int(m.qos))
                        await self.emit(board, out)
            finally:
                self._clients.pop(board.esp_id, None)

    async def _end_session(self, esp_id: str) -> None:
        task = self._sessions.pop(esp_id, None)
        self._ready.pop(esp_id, None)
        if task is None:
            return
        # Python 3.11's wait_for (inside aiomqtt's publish) drops a cancellation that
        # arrives together with the PUBACK; the task then waits for messages forever:
        # cancel until it ends
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task

    async def _publish_raw(self, m: Outgoing) -> None:
        """Publish as the broker would (a will): on any open board connection, or a
        short-lived one."""
        client = next(iter(self._clients.values()), None)
        if client is not None:
            await client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            return
        host, port = parse_url(self.url)
        async with aiomqtt.Client(host, port) as c:
            await c.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)

    async def _ticker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            due = [d for d in (b.next_due() for b in self.boards.values()) if d is not None]
            delay = self.max_sleep if not due else max(0.0, min(min(due) - self.now(), self.max_sleep))
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            await self.advance()
