"""Device policy: what the server says to each board, and when (PROTOCOL.md,
"Server -> ESP32"; docs/protocol.md says why).

Pure: board messages and the time (``now``, Unix seconds) in, server messages
(``codec.Outgoing``) and events out. No I/O, no clock, no asyncio; engine/app.py
publishes what comes out. Whether a device is under an emergency stop is the
guard's business: the tracker asks through ``latched(device)``.

The rules it keeps, per board:
- every heartbeat is acknowledged at once (at most one ack per ``ack_interval``),
  echoing the board's own ``active_handover_epoch`` (1 when it has none): current
  firmware refuses any other number after it was offline, and 0 always;
- config goes only after the first ack of this server session, with a fresh
  ``correlation_id``, split to fit the board, never retained, at most one push per
  ``push_interval``; what was sent is remembered (``snapshot``) so that an item the
  device map drops is removed with ``active: false``;
- a board under an emergency stop gets no config (a push clears a legacy board's
  latch) and, when it first speaks this session or comes back from a reboot, the
  stop again before anything else; a reset sends ``clear_emergency`` and turns
  nothing on;
- unknown boards are answered ``pending_approval`` and tracked up to
  ``max_unknown`` (least recently seen evicted).
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine import codec
from engine.errors import CodecError
from engine.model import Deployment, Device, Event

GENERATIONS = ("legacy", "current")
CONFIG_RESPONSE_TIMEOUT = 30.0  # seconds a push may go unanswered before it is reported
#: current firmware refuses clear_emergency within 5 s of the stop (SafetyController::
#: clearEmergencyStop): a reset sooner than this after a stop waits for it
CLEAR_AFTER_STOP = 5.5
DISCOVERIES_PER_MINUTE = 20  # unknown boards logged and recorded a minute; the rest are counted


class Reply(NamedTuple):
    """What the server must publish (in this order) and record."""

    messages: list[codec.Outgoing]
    events: list[Event]


def _reply() -> Reply:
    return Reply([], [])


@dataclass(slots=True)
class Push:
    """A config push awaiting its ``config_response``."""

    correlation_id: str
    sent_at: float
    why: str
    empty: tuple[str, ...] = ()  # halves sent empty: legacy answers those with an error
    answered: set[str] = field(default_factory=set)  # halves answered (sensor, actuator)


@dataclass(slots=True)
class Board:
    """What the server knows about one board, in this session (``sent`` survives
    restarts through the snapshot)."""

    esp_id: str
    device: str | None  # device map name; None = unknown board
    generation: str | None = None  # legacy | current; None = not told yet
    epoch: int = 0  # the board's own handover counter, from its heartbeat or announce
    acked: bool = False  # acknowledged at least once this session
    uptime: float | None = None
    boot_id: str | None = None
    last_seen: float = 0.0
    last_ack: float = -math.inf
    last_push: float = -math.inf
    config_due: str | None = "first ack"  # why a push is due; None = nothing due
    stop_due: bool = False  # the board must get the emergency stop again
    stopped_at: float | None = None  # when it was last sent a stop
    clear_due: float | None = None  # when to send clear_emergency (current refuses it within 5 s of a stop)
    pending: list[Push] = field(default_factory=list)
    acks: int = 0
    pushes: int = 0
    last_response: dict[str, Any] | None = None


def sensor_key(item: Mapping[str, Any]) -> str:
    """Boards tell sensors apart by gpio and bus address (OneWire ROM, I2C)."""
    addr = item.get("onewire_address") or item.get("i2c_address")
    return f"{item.get('gpio')}/{str(item.get('sensor_type', '')).lower()}/{addr or ''}"


def items_of(device: Device) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """A device's config items keyed as the board tells them apart (sensor_key, gpio)."""
    sensors = {}
    for s in device.sensors:
        item = codec.sensor_item(s)
        sensors[sensor_key(item)] = item
    actuators = {str(a.gpio): codec.actuator_item(a) for a in device.actuators}
    return sensors, actuators


class DeviceTracker:
    """The server's side of the board contract. ``latched(device_name)`` says whether
    the guard holds an emergency stop for that device (or for all).

    ``tokens``: device name -> per-board emergency token (from the environment);
    a board without one gets its esp id, which is what legacy firmware stores
    until told otherwise and what current firmware ignores when it has none.
    """

    def __init__(self, kaiser_id: str, deployment: Deployment, *, latched: Callable[[str], bool],
                 tokens: Mapping[str, str] | None = None, max_unknown: int = 1000,
                 ack_interval: float = 1.0, push_interval: float = 10.0) -> None:
        self.kaiser_id = kaiser_id
        self.latched = latched
        self.max_unknown = max_unknown
        self.ack_interval = ack_interval
        self.push_interval = push_interval
        self.boards: dict[str, Board] = {}
        self.unknown: OrderedDict[str, Board] = OrderedDict()
        self.unknown_evicted = 0
        self.acks_skipped = 0
        self.discoveries_suppressed = 0
        self._discovery_window = -math.inf
        self._discoveries = 0
        #: esp id -> what it was last sent: {"sensors": {key: item}, "actuators": {gpio: item}}
        #: esp id -> the items it was last sent; an entry is replaced, never changed
        #: in place (``snapshot`` shares them with the store's writer thread)
        self.sent: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        self._serial = 0
        self.stopped_all = False  # a broadcast stop is in force (legacy boards re-get it)
        self.tokens: dict[str, str] = dict(tokens or {})
        self.deployment = deployment
        self._by_esp: dict[str, Device] = {}
        self.install(deployment, 0.0)

    # ------------------------------------------------------------------ map
    def install(self, deployment: Deployment, now: float) -> Reply:
        """A new device map (start, reload): boards whose items changed get a push
        (after their first ack), boards dropped from the map lose what they were sent."""
        out = _reply()
        old = self._by_esp
        self.deployment = deployment
        self._by_esp = {d.esp_id: d for d in deployment.devices.values()}
        for esp, b in list(self.boards.items()):
            dev = self._by_esp.get(esp)
            b.device = dev.name if dev else None
            if dev is None:
                del self.boards[esp]
                self._remember_unknown(b)
        for esp, dev in self._by_esp.items():
            nb = self.boards.get(esp) or self.unknown.pop(esp, None)
            if nb is None:
                continue
            nb.device = dev.name
            self.boards[esp] = nb
            if self._changed(dev):
                nb.config_due = "device map changed"
                nb.last_push = -math.inf  # a deliberate change goes at once; only board-driven pushes are paced
        for esp in set(old) - set(self._by_esp):
            if self.sent.get(esp):
                ub = self.unknown.get(esp)
                if ub is not None and ub.acked:
                    out.messages.extend(self._removals_only(ub, now, out.events))
        return out

    def _changed(self, dev: Device) -> bool:
        sensors, actuators = items_of(dev)
        last = self.sent.get(dev.esp_id)
        return last is None or last.get("sensors") != sensors or last.get("actuators") != actuators

    def device_of(self, esp_id: str) -> Device | None:
        return self._by_esp.get(esp_id)

    def token(self, device: Device) -> str:
        return self.tokens.get(device.name) or device.esp_id

    def generation(self, esp_id: str) -> str:
        """legacy | current | auto (not told yet): the device map wins over detection."""
        dev = self._by_esp.get(esp_id)
        fw = getattr(dev, "firmware", "auto") if dev is not None else "auto"
        if fw in GENERATIONS:
            return str(fw)
        b = self.boards.get(esp_id) or self.unknown.get(esp_id)
        return b.generation if b is not None and b.generation else "auto"

    # ------------------------------------------------------------------ boards
    def board(self, esp_id: str, now: float) -> Board:
        """The record of a board that spoke (unknown ones capped, LRU)."""
        b = self.boards.get(esp_id)
        if b is not None:
            return b
        dev = self._by_esp.get(esp_id)
        if dev is not None:
            b = self.unknown.pop(esp_id, None) or Board(esp_id, dev.name)
            b.device = dev.name
            self.boards[esp_id] = b
            return b
        b = self.unknown.get(esp_id)
        if b is None:
            b = Board(esp_id, None, last_seen=now)
        else:
            self.unknown.move_to_end(esp_id)
        self._remember_unknown(b)
        return b

    def _remember_unknown(self, b: Board) -> None:
        self.unknown[b.esp_id] = b
        self.unknown.move_to_end(b.esp_id)
        while len(self.unknown) > self.max_unknown:
            self.unknown.popitem(last=False)
            self.unknown_evicted += 1

    def may_report_discovery(self, now: float) -> bool:
        """At most ``DISCOVERIES_PER_MINUTE`` unknown boards are logged and recorded a
        minute; the rest are counted (``discoveries_suppressed``): 20,000 made-up ids
        must not flood the log, the events or the store."""
        if now - self._discovery_window >= 60.0:
            self._discovery_window, self._discoveries = now, 0
        if self._discoveries >= DISCOVERIES_PER_MINUTE:
            self.discoveries_suppressed += 1
            return False
        self._discoveries += 1
        return True

    def seen(self, esp_id: str, now: float) -> tuple[Board, bool]:
        """A board spoke (not a retained snapshot). Returns (board, first time)."""
        b = self.boards.get(esp_id)
        if b is not None:  # a board of the map heard before: every reading takes this way
            b.last_seen = now
            return b, False
        known = esp_id in self.unknown
        b = self.board(esp_id, now)
        b.last_seen = now
        return b, not known

    def announce(self, msg: codec.SessionAnnounce, now: float) -> None:
        """Current firmware announces its session epoch on every connect."""
        if msg.retained or msg.esp_id not in self._by_esp:
            return
        b = self.board(msg.esp_id, now)
        b.epoch = msg.handover_epoch
        b.generation = "current"

    def heartbeat(self, hb: codec.Heartbeat, now: float) -> Reply:
        """Answer a heartbeat: the stop first when one is due, then the ack, then
        config when due."""
        out = _reply()
        if hb.retained:
            return out  # a replayed heartbeat is no sign of life and needs no answer
        b, first = self.seen(hb.esp_id, now)
        dev = self._by_esp.get(hb.esp_id)
        if hb.generation is not None:
            b.generation = hb.generation
        elif b.generation is None and hb.fields is not None:
            b.generation = "legacy"  # a heartbeat without any current-only field
        if hb.handover_epoch is not None:
            b.epoch = hb.handover_epoch
        rebooted = (hb.uptime is not None and b.uptime is not None and hb.uptime + 1 < b.uptime) or (
            hb.boot_sequence_id is not None and b.boot_id is not None and hb.boot_sequence_id != b.boot_id)
        if hb.uptime is not None:
            b.uptime = hb.uptime
        if hb.boot_sequence_id is not None:
            b.boot_id = hb.boot_sequence_id
        if dev is not None and rebooted:
            out.events.append(Event(now, "device", "warning", dev.name,
                                    f"{dev.name} ({hb.esp_id}) rebooted (uptime {hb.uptime or 0:.0f} s)",
                                    {"esp_id": hb.esp_id, "rebooted": True}))
            b.config_due = b.config_due or "reboot"
        latched = dev is not None and self._latched(dev.name)
        if dev is not None and latched and (rebooted or first or not b.acked or b.stop_due):
            # a rebooted board lost its latch; a board first heard this session may
            # never have got the stop: the stop goes before anything else
            again = self._stop_again(b, dev, now)
            out.messages.extend(again)
            b.stop_due = False
            if again:
                out.events.append(Event(now, "emergency", "critical", dev.name,
                                        f"emergency stop sent again to {dev.name} ({hb.esp_id})"
                                        + (": it rebooted" if rebooted else ""), {"esp_id": hb.esp_id}))
        if now - b.last_ack >= self.ack_interval:
            out.messages.append(codec.encode_heartbeat_ack(
                "" if hb.kaiser_id == "" else self.kaiser_id, hb.esp_id, server_time=now,
                status="online" if dev is not None else "pending_approval",
                config_available=dev is not None and b.config_due is not None, handover_epoch=b.epoch,
                # an unknown board's ack keeps no state in the MQTT client (QoS 0): made-up
                # ids cannot queue up acks awaiting the broker; it heartbeats again anyway
                qos=1 if dev is not None else 0))
            b.last_ack = now
            b.acks += 1
            if dev is not None and not b.acked:
                out.events.append(Event(now, "device", "info", dev.name,
                                        f"{dev.name} ({hb.esp_id}) registered ({self.generation(hb.esp_id)} "
                                        f"firmware, handover epoch {max(1, b.epoch)})",
                                        {"esp_id": hb.esp_id, "registered": True,
                                         "firmware": self.generation(hb.esp_id)}))
            b.acked = True
        else:
            self.acks_skipped += 1
        if dev is not None:
            out.messages.extend(self._push_if_due(b, dev, now, out.events))
        return out

    # ------------------------------------------------------------------ config
    def _push_if_due(self, b: Board, dev: Device, now: float, events: list[Event]) -> list[codec.Outgoing]:
        if b.config_due is None or not b.acked or now - b.last_push < self.push_interval:
            return []
        if self._latched(dev.name):
            return []  # a push clears a legacy board's latch: it waits for the reset
        return self.push(b, dev, now, b.config_due, events)

    def push(self, b: Board, dev: Device, now: float, why: str, events: list[Event]) -> list[codec.Outgoing]:
        """Send the device's items, plus ``active: false`` for what it was sent
        before and the map no longer has."""
        sensors, actuators = items_of(dev)
        last = self.sent.get(dev.esp_id, {})
        s_items = list(sensors.values()) + [codec.removal(i, "sensor") for k, i in
                                            last.get("sensors", {}).items() if k not in sensors]
        a_items = list(actuators.values()) + [codec.removal(i, "actuator") for k, i in
                                              last.get("actuators", {}).items() if k not in actuators]
        removed = len(s_items) - len(sensors) + len(a_items) - len(actuators)
        try:
            msgs = codec.encode_configs(self.kaiser_id, dev.esp_id, s_items, a_items, self._ids(dev.esp_id),
                                        generation=self.generation(dev.esp_id), board=dev.board)
        except CodecError as exc:
            events.append(Event(now, "config", "critical", dev.name, f"cannot send config to {dev.name}: {exc}",
                                {"esp_id": dev.esp_id}))
            b.config_due = None
            return []
        for m in msgs:
            body = json.loads(m.payload)
            empty = tuple(k for k, key in (("sensor", "sensors"), ("actuator", "actuators")) if not body.get(key))
            b.pending.append(Push(str(body["correlation_id"]), now, why, empty))
        del b.pending[:-16]
        self.sent[dev.esp_id] = {"sensors": sensors, "actuators": actuators}
        b.config_due = None
        b.last_push = now
        b.pushes += 1
        ids = [p.correlation_id for p in b.pending[-len(msgs):]]
        events.append(Event(now, "config", "info", dev.name,
                            f"sent device config to {dev.name} ({why}): {len(sensors)} sensor(s), "
                            f"{len(actuators)} actuator(s)" + (f", {removed} removed" if removed else "")
                            + (f" in {len(msgs)} pushes" if len(msgs) > 1 else ""),
                            {"esp_id": dev.esp_id, "correlation_ids": ids, "removed": removed}))
        return msgs

    def _removals_only(self, b: Board, now: float, events: list[Event]) -> list[codec.Outgoing]:
        last = self.sent.pop(b.esp_id, {})
        s_items = [codec.removal(i, "sensor") for i in last.get("sensors", {}).values()]
        a_items = [codec.removal(i, "actuator") for i in last.get("actuators", {}).values()]
        if not s_items and not a_items:
            return []
        try:
            msgs = codec.encode_configs(self.kaiser_id, b.esp_id, s_items, a_items, self._ids(b.esp_id),
                                        generation=b.generation or "auto")
        except CodecError:
            return []
        events.append(Event(now, "config", "info", b.esp_id,
                            f"{b.esp_id} left the device map: {len(s_items) + len(a_items)} item(s) removed",
                            {"esp_id": b.esp_id}))
        return msgs

    def _ids(self, esp_id: str) -> Iterable[str]:
        while True:
            self._serial += 1
            yield f"cfg-{esp_id}-{self._serial}"

    def config_response(self, msg: codec.ConfigResponse, now: float) -> Event:
        """Match a ``config_response`` to its push (by ``correlation_id`` on current
        firmware; legacy sends none: the oldest pending push) and say what it means."""
        b = self.board(msg.esp_id, now)
        subject = b.device or msg.esp_id
        push = None
        if msg.correlation_id:
            push = next((p for p in b.pending if p.correlation_id == msg.correlation_id), None)
        else:  # legacy: the oldest push that has not answered this half yet
            push = next((p for p in b.pending if msg.config_type not in p.answered), None)
        # legacy refuses an empty or missing half with an error; the other half is applied
        expected = not msg.ok and push is not None and msg.config_type in push.empty
        if push is not None:
            push.answered.add(msg.config_type or "?")
            if {"sensor", "actuator"} <= push.answered:
                b.pending.remove(push)
        severity = "info" if msg.ok or expected else "warning"
        what = f"{subject} config {msg.config_type or ''} {msg.status}".replace("  ", " ")
        text = f"{what}: {msg.message}" + (" (expected: that push carried none)" if expected else "")
        if push is not None:
            text += f" [{push.correlation_id}, {push.why}]"
        elif msg.correlation_id:
            text += f" [{msg.correlation_id}: not a push of this server session]"
        data = {"esp_id": msg.esp_id, "status": msg.status, "type": msg.config_type, "count": msg.count,
                "error_code": msg.error_code, "failed_item": dict(msg.failed_item or {}),
                "correlation_id": msg.correlation_id or (push.correlation_id if push else None),
                "push": push.why if push else None}
        b.last_response = {"ts": now, **data}
        return Event(now, "config_response", severity, subject, text, data)

    def tick(self, now: float) -> Reply:
        """Clears and pushes that were due (a board refuses a clear within 5 s of
        its stop; pushes are rate-limited); pushes nobody answered."""
        out = _reply()
        out.messages.extend(self._clears(now))
        for b in self.boards.values():
            dev = self._by_esp.get(b.esp_id)
            if dev is None:
                continue
            out.messages.extend(self._push_if_due(b, dev, now, out.events))
            for p in list(b.pending):
                if now - p.sent_at > CONFIG_RESPONSE_TIMEOUT:
                    b.pending.remove(p)
                    if p.answered:
                        continue  # one half answered: current says nothing about an empty half
                    out.events.append(Event(now, "config_response", "warning", dev.name,
                                            f"{dev.name} did not answer config push {p.correlation_id} "
                                            f"({p.why}) within {CONFIG_RESPONSE_TIMEOUT:.0f} s",
                                            {"esp_id": b.esp_id, "correlation_id": p.correlation_id}))
        return out

    def next_due(self) -> float | None:
        due = [b.last_push + self.push_interval for b in self.boards.values()
               if b.config_due is not None and b.acked]
        due += [p.sent_at + CONFIG_RESPONSE_TIMEOUT for b in self.boards.values() for p in b.pending]
        due += [b.clear_due for b in self.boards.values() if b.clear_due is not None]
        return min(due) if due else None

    # ------------------------------------------------------------------ emergency
    def _latched(self, device: str) -> bool:
        try:
            return bool(self.latched(device))
        except Exception:
            return True  # unsure: keep the stop

    def _stop(self, dev: Device, reason: str) -> codec.Outgoing:
        return codec.encode_device_emergency(self.kaiser_id, dev.esp_id, self.token(dev), reason)

    def _stop_again(self, b: Board, dev: Device, now: float) -> list[codec.Outgoing]:
        """The stop for a board that may have lost its latch (rebooted, first heard)."""
        out = []
        if self.generation(dev.esp_id) != "current" and self.stopped_all:
            # legacy boards act only on the broadcast (every board is stopped anyway)
            out.append(codec.encode_emergency("emergency stop still active", timestamp=now))
        if self.generation(dev.esp_id) != "legacy":
            out.append(self._stop(dev, "emergency stop still active"))
        b.stopped_at = now
        b.clear_due = None
        return out

    def emergency(self, target: str, reason: str, now: float) -> Reply:
        """An emergency stop. ``all`` -> the broadcast (both generations; the only
        stop a legacy board acts on) plus the per-board stop to every board that
        may run current firmware (production builds act on a token). A device ->
        its per-board stop; a legacy board has none that works (its handler is
        unreachable in that firmware), so what stops it is the OFF the guard sends
        to each of its actuators, and the guard's latch keeps them off."""
        out = _reply()
        devs = list(self._by_esp.values()) if target == "all" else \
            [d for d in self._by_esp.values() if d.name == target]
        if target == "all":
            self.stopped_all = True
            out.messages.append(codec.encode_emergency(reason, timestamp=now))
        for dev in devs:
            gen = self.generation(dev.esp_id)
            if gen != "legacy":
                out.messages.append(self._stop(dev, reason))
            elif target != "all":
                out.events.append(Event(now, "emergency", "warning", dev.name,
                                        f"{dev.name} runs legacy firmware, which has no working per-board stop: "
                                        "its actuators were sent OFF and the server holds the latch",
                                        {"esp_id": dev.esp_id}))
            b = self.board(dev.esp_id, now)
            b.stop_due = False
            b.stopped_at = now
            b.clear_due = None
        return out

    def reset(self, target: str, now: float) -> Reply:
        """After the guard lifted a stop: clear each board it no longer holds, as its
        generation understands it (current: ``clear_emergency``, which the board
        refuses within 5 s of the stop, so it is sent no earlier; legacy: a config
        push naming its actuators). Nothing is switched on."""
        out = _reply()
        if target == "all":
            self.stopped_all = False
        for dev in self._by_esp.values():
            if target != "all" and dev.name != target:
                continue
            if self._latched(dev.name):
                continue  # another stop (all, or this device) still holds it
            b = self.board(dev.esp_id, now)
            gen = self.generation(dev.esp_id)
            if gen != "legacy":
                b.clear_due = max(now, (b.stopped_at or -math.inf) + CLEAR_AFTER_STOP)
            if gen != "current":
                b.config_due = b.config_due or "emergency reset"
            b.last_push = -math.inf
        out.messages.extend(self._clears(now))
        for dev in self._by_esp.values():
            b2 = self.boards.get(dev.esp_id)
            if b2 is not None and (target == "all" or dev.name == target):
                out.messages.extend(self._push_if_due(b2, dev, now, out.events))
        return out

    def _clears(self, now: float) -> list[codec.Outgoing]:
        out = []
        for b in self.boards.values():
            dev = self._by_esp.get(b.esp_id)
            if b.clear_due is None or dev is None or now < b.clear_due:
                continue
            b.clear_due = None
            if not self._latched(dev.name):
                out.append(codec.encode_device_emergency(self.kaiser_id, dev.esp_id, self.token(dev), clear=True))
        return out

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """What must survive a restart: what each board was sent, their generation.
        A copy the store encodes in its writer thread while the tracker goes on: the
        outer map is copied; a board's entry is shared, as ``push`` and ``restore``
        replace an entry and never change one in place (a deep copy of 500 boards'
        items held the event loop 3 ms every snapshot)."""
        return {"sent": dict(self.sent), "serial": self._serial, "stopped_all": self.stopped_all,
                "generation": {e: b.generation for e, b in self.boards.items() if b.generation}}

    def restore(self, snap: Mapping[str, Any]) -> None:
        sent = snap.get("sent")
        if isinstance(sent, dict):
            self.sent = {str(e): v for e, v in sent.items() if isinstance(v, dict)}
        self.stopped_all = snap.get("stopped_all") is True
        serial = snap.get("serial")
        if isinstance(serial, int):
            self._serial = serial
        gens = snap.get("generation")
        if isinstance(gens, dict):
            for esp, g in gens.items():
                if g in GENERATIONS and esp in self._by_esp:
                    self.board(esp, 0.0).generation = g

    def summary(self) -> dict[str, Any]:
        """For /health and status: counts, not one entry per unknown board."""
        return {"known": len(self.boards), "registered": sum(1 for b in self.boards.values() if b.acked),
                "unknown": len(self.unknown), "unknown_evicted": self.unknown_evicted,
                "discoveries_suppressed": self.discoveries_suppressed,
                "acks_skipped": self.acks_skipped}


def tokens_from_env(deployment: Deployment, environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Per-board emergency tokens from ``emergency_token_env`` variables ->
    (device -> token, problems)."""
    env = os.environ if environ is None else environ
    tokens: dict[str, str] = {}
    problems: list[str] = []
    for dev in deployment.devices.values():
        name = getattr(dev, "emergency_token_env", None)
        if not name:
            continue
        value = env.get(name)
        if not value:
            problems.append(f"{dev.name}: emergency_token_env {name} is not set; using the esp id")
        elif not value.isascii() or len(value) > 64:
            problems.append(f"{dev.name}: the token in {name} must be 1-64 ASCII characters; using the esp id")
        else:
            tokens[dev.name] = value
    return tokens, problems
