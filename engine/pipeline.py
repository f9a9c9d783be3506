"""Kaiser's pure pipeline: rule engine -> arbitration -> safety guard. No I/O.

``Kaiser(deployment)`` is the one thing the server (engine/app.py) and ``kaiser
test`` drive. Every method takes ``now`` (Unix seconds) and returns
``engine.model.Outputs``: ``sent`` holds the commands that passed the guard (to be
published), ``blocked`` every refused command (arbitration CONFLICT, loop-guard
RATE_LIMIT, or the guard's code), ``runs``/``notifications`` from the rules,
``events`` (one per block, conflict, suspension, emergency, online/offline),
``emergencies`` to publish. Nothing reaches ``sent`` without ``Guard.check``
(or the guard's own server-originated commands).

Holds the guard ended (an emergency stop, a lost sensor) or refused for a while
(an emergency stop, a lost sensor, min_off, max_starts, rate_limit; the board
offline) are taken again when that is over: on the next fresh reading of one of
the rule's sensors (after a reset, once the sensor is fresh, once the time limit
passed), if the rule's condition is true then; after an offline spell, when the
board is back. A reset itself switches nothing on.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine import freshness, gcpause
from engine.core import Decisions, Engine
from engine.errors import EngineError
from engine.model import (
    Allowed,
    Blocked,
    Code,
    Command,
    Deployment,
    Event,
    Outputs,
    Reading,
    RuleRun,
)

#: why a hold ended or was refused -> it is taken again on a fresh reading of its rule's sensors
RESUME_ON_READING = frozenset({Code.EMERGENCY_STOP_ACTIVE, Code.SENSOR_LOST, Code.MIN_OFF, Code.MAX_STARTS,
                               Code.RATE_LIMIT})
#: ... or when its board is back
RESUME_ON_DEVICE = frozenset({Code.DEVICE_OFFLINE})


@dataclass(slots=True)
class _Unheld:
    """A hold the guard ended or refused, waiting to be taken again."""

    rule: str
    code: Code  # the latest refusal: decides what it waits for
    since: float
    #: what ended the hold first (an emergency stop, a lost sensor): ``kaiser why`` says it
    origin: Code | None = None
    #: when it was last refused (not tried again in the same step)
    last: float | None = None

GuardFactory = Callable[[Deployment, bool, float | None], Any]


def _default_guard(deployment: Deployment, assume_online: bool, start: float | None) -> Any:
    from engine.safety import Guard

    return Guard(deployment, assume_online=assume_online, start=start)


class Kaiser:
    """Engine + Guard over one deployment.

    ``assume_online``: devices count as online from the start and are never timed
    out (``kaiser test``; a test step may still set them offline). Otherwise a
    device is offline until seen, and goes offline after
    ``safety.defaults.offline_after`` without heartbeat or data (checked in tick).
    """

    def __init__(self, deployment: Deployment, *, assume_online: bool = False, start: float | None = None,
                 guard_factory: GuardFactory | None = None) -> None:
        self.deployment = deployment
        self._assume_online = assume_online
        self._start = start
        self._guard_factory = guard_factory or _default_guard
        with gcpause.paused():  # the compiled network and the guard's tables live on (engine/gcpause.py)
            self.engine = Engine(deployment, start=start)
            self.guard = self._guard_factory(deployment, assume_online, start)
        self._last_seen: dict[str, float] = {}
        self._online: dict[str, bool] = {}
        self._started = False
        self._unheld: dict[str, _Unheld] = {}  # actuator -> a hold to take again (see module doc)
        self._reset_at: dict[str, float] = {}  # device or "all" -> when its emergency stop was last reset
        # offline detection without a scan of every device per tick: one heap entry
        # (last_seen + offline_after, device) per device not known to be offline; an
        # entry whose device was seen since is re-keyed lazily when it reaches the top
        self._offline_heap: list[tuple[float, str]] = []
        self._in_heap: set[str] = set()
        self._heap_dirty = True
        self._order = {dev: i for i, dev in enumerate(deployment.devices)}

    @property
    def version(self) -> str:
        """The compiled rules' version (a content hash)."""
        return self.engine.version

    # ------------------------------------------------------------------ helpers
    def _device(self, name: str) -> str | None:
        if name in self.deployment.devices:
            return name
        d = self.deployment.device_by_esp(name)
        return d.name if d is not None else None

    def _begin(self, now: float) -> Outputs:
        out = Outputs()
        if self._started:
            return out
        self._started = True
        self._heap_dirty = True
        if self._start is None:
            self._start = now
        out.events.extend(self._compile_events(now))
        if self._assume_online:
            for dev in self.deployment.devices:
                self._online[dev] = True
                self._last_seen.setdefault(dev, now)
                out.extend(self._decide(self.engine.device_state, dev, True, now))
        return out

    def _compile_events(self, now: float) -> list[Event]:
        """One critical event per rule the network could not take (it never runs)."""
        return [Event(now, "rule", "critical", name, f"rule {name} is not running: {why}", {"rule": name})
                for name, why in sorted(self.engine.errors().items())]

    def _decide(self, step: Callable[..., Decisions], *args: Any) -> Outputs:
        """Run one engine step and pass its decisions through the guard. A failure of
        the rule network becomes a critical event, never an exception (the guard's
        own timers keep running)."""
        out = Outputs()
        self._decide_into(out, step, *args)
        return out

    def _decide_into(self, out: Outputs, step: Callable[..., Decisions], *args: Any) -> None:
        """``_decide`` appending to ``out`` (the per-reading path builds one Outputs)."""
        now = float(args[-1])
        try:
            decisions = step(*args)
        except EngineError as e:
            out.events.append(Event(now, "engine", "critical", "", f"rule engine failed: {e}", {"error": str(e)}))
            return
        if decisions:
            self._apply_into(out, decisions, now)

    def _apply(self, d: Decisions, now: float) -> Outputs:
        """Decisions -> guard -> Outputs."""
        out = Outputs()
        self._apply_into(out, d, now)
        return out

    def _apply_into(self, out: Outputs, d: Decisions, now: float) -> None:
        out.runs.extend(d.runs)
        out.notifications.extend(d.notifications)
        out.events.extend(d.events)
        out.blocked.extend(d.blocked)
        for e in d.emergencies:
            out.extend(self._from_guard(self.guard.emergency_stop(e.target, e.reason, f"rule {e.rule}", now),
                                        now, Code.EMERGENCY_STOP_ACTIVE))
        for cmd in d.commands:
            self._guarded_into(out, cmd, now)

    def _from_guard(self, out: Outputs, now: float, code: Code | None = None) -> Outputs:
        """Commands the guard issued itself (for:-end and max_runtime OFFs, renewals,
        emergency OFFs): the engine must know them, or a later `toggle` or an
        `actuator is` fallback would start from a state that no longer holds. A held
        actuator the guard switched off for a reason that passes (an emergency stop,
        ``code``; a lost sensor, from the event) waits to be held again."""
        codes: dict[str, object] | None = None
        for a in out.sent:
            c = a.command
            self.engine.commanded(c.actuator, c.value)
            if c.value > 0.0 or c.source != "safety":
                continue
            why = code
            if why is None:
                if codes is None:
                    codes = {ev.subject: ev.data.get("code") for ev in out.events if ev.kind == "safety"}
                found = codes.get(c.actuator)
                why = Code(found) if isinstance(found, str) and found in Code.__members__ else None
            if why in (Code.EMERGENCY_STOP_ACTIVE, Code.SENSOR_LOST):
                holder = self.engine.holder(c.actuator)
                if holder is not None:
                    self._unheld[c.actuator] = _Unheld(holder, why, now, why)
        return out

    def _guarded(self, cmd: Command, now: float) -> Outputs:
        out = Outputs()
        self._guarded_into(out, cmd, now)
        return out

    def _guarded_into(self, out: Outputs, cmd: Command, now: float) -> None:
        verdict = self.guard.check(cmd, now)
        prev = self._unheld.pop(cmd.actuator, None) if self._unheld else None
        if isinstance(verdict, Allowed):
            out.sent.append(verdict)
            self.engine.commanded(verdict.command.actuator, verdict.command.value)
        else:
            out.blocked.append(verdict)
            out.events.append(self._block_event(verdict, now))
            if cmd.hold and cmd.rule is not None and verdict.code in (RESUME_ON_DEVICE | RESUME_ON_READING):
                # a `while` rule that is still true holds again when that is over
                same = prev is not None and prev.rule == cmd.rule
                self._unheld[cmd.actuator] = _Unheld(
                    cmd.rule, verdict.code, prev.since if same else now,  # type: ignore[union-attr]
                    prev.origin if same else verdict.code, now)  # type: ignore[union-attr]

    def _rehold(self, device: str, now: float) -> Outputs:
        """Re-send holds the guard refused while ``device`` was offline, for rules
        that still hold them."""
        out = Outputs()
        for ref, u in list(self._unheld.items()):
            if u.code not in RESUME_ON_DEVICE or ref.split(".", 1)[0] != device:
                continue
            cmd = self.engine.hold_command(ref) if self.engine.holding(u.rule, ref) else None
            if cmd is None:
                del self._unheld[ref]
            else:
                out.extend(self._guarded(cmd, now))
        return out

    def _resume(self, readings: Sequence[Reading], now: float, out: Outputs) -> None:
        """Take holds again that an emergency stop (now reset) or a lost sensor (now
        fresh) ended: on a fresh reading of one of the rule's sensors, when the rule's
        condition is true now. While a stop is latched nothing is tried."""
        stale_after = self.deployment.safety.defaults.stale_after
        fresh = {r.sensor for r in readings
                 if not r.retained and freshness.value((r.value, r.ts, r.quality), now, stale_after) is not None}
        if not fresh:
            return
        for ref, u in list(self._unheld.items()):
            if u.code not in RESUME_ON_READING or u.last == now:
                continue
            if not self.engine.holding(u.rule, ref):
                del self._unheld[ref]
                continue
            device = ref.split(".", 1)[0]
            if self.guard.emergency_active(device):
                continue
            watched = self.guard.limits.entries.get(ref)
            sensors = {*self.engine.rule_sensors(u.rule), *(watched.watched if watched is not None else ())}
            if fresh.isdisjoint(sensors) or not self.engine.true_now(u.rule):
                continue
            cmd = self.engine.hold_command(ref)
            if cmd is None:
                del self._unheld[ref]
                continue
            if u.origin is Code.EMERGENCY_STOP_ACTIVE:
                reset = max(self._reset_at.get(device, 0.0), self._reset_at.get("all", 0.0))
                why = f"held again after reset at {self._local(reset)}"
                trigger_extra: dict[str, float | None] = {"held_again_after_reset_at": reset}
            elif u.origin is Code.SENSOR_LOST:
                seen = sorted(fresh & sensors)
                why = f"held again: {', '.join(seen)} fresh again after the sensor was lost"
                trigger_extra = {"held_again_after_sensor_loss_at": u.since}
            else:
                why = f"held again after {u.origin or u.code} refused it at {self._local(u.since)}"
                trigger_extra = {"held_again_after_refusal_at": u.since}
            cmd = Command(cmd.actuator, cmd.value, cmd.duration, cmd.source, cmd.rule, cmd.priority,
                          f"{cmd.reason} ({why})", cmd.toggle, cmd.hold)
            self._guarded_into(out, cmd, now)
            trigger = {**self.engine.trigger(u.rule), **trigger_extra}
            out.runs.append(RuleRun(u.rule, now, trigger, (f"{why}: set {ref} {cmd.value:g}",), "ran",
                                    self.engine.version))

    def _local(self, ts: float) -> str:
        """An instant for people, in the deployment's time zone."""
        try:
            tz = ZoneInfo(self.deployment.tz)
        except Exception:
            tz = ZoneInfo("UTC")
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    @staticmethod
    def _block_event(b: Blocked, now: float) -> Event:
        c = b.command
        who = f"rule {c.rule}" if c.rule else c.source
        return Event(now, "safety", "warning", c.actuator, f"{who}: {c.actuator} blocked ({b.code}): {b.reason}",
                     {"code": str(b.code), "rule": c.rule, "source": c.source, "value": c.value})

    def _set_online(self, device: str, online: bool, now: float, reason: str) -> Outputs:
        out = Outputs()
        self._set_online_into(out, device, online, now, reason)
        return out

    def _set_online_into(self, out: Outputs, device: str, online: bool, now: float, reason: str) -> None:
        if self._online.get(device) == online:
            return
        self._online[device] = online
        if online and device not in self._in_heap and not self._heap_dirty and self._start is not None:
            self._in_heap.add(device)
            heapq.heappush(self._offline_heap,
                           (self._last_seen.get(device, self._start) + self.deployment.safety.defaults.offline_after,
                            device))
        self.guard.device_online(device, online, now)
        msg = f"device {device} is {'online' if online else 'offline'}" + (f": {reason}" if reason else "")
        out.events.append(Event(now, "device", "info" if online else "warning", device, msg,
                                {"online": online}))
        self._decide_into(out, self.engine.device_state, device, online, now)
        if online and self._unheld:
            out.extend(self._rehold(device, now))

    # ------------------------------------------------------------------ inputs
    def receive(self, reading: Reading, now: float) -> Outputs:
        """One sensor reading (already routed to its ref)."""
        out = Outputs() if self._started else self._begin(now)
        self.guard.reading(reading)
        self._alive(reading, now, out)
        self._decide_into(out, self.engine.receive, reading, now)
        if self._unheld:
            self._resume((reading,), now, out)
        return out

    def receive_many(self, readings: Sequence[Reading], now: float) -> Outputs:
        """Readings that arrived together (the values of one ``sensor/batch`` message,
        the readings of one test step): all are stored, in the guard and the rule
        engine, before the rules are evaluated once. Of two readings of one ref the
        later wins."""
        out = Outputs() if self._started else self._begin(now)
        if not readings:
            return out
        for reading in readings:
            self.guard.reading(reading)
        for reading in readings:
            self._alive(reading, now, out)
        self._decide_into(out, self.engine.receive_many, readings, now)
        if self._unheld:
            self._resume(readings, now, out)
        return out

    def _alive(self, reading: Reading, now: float, out: Outputs) -> None:
        """A reading is a sign of life of its board; a retained one (the broker's old
        copy) is none."""
        if reading.retained:
            return
        dev = reading.sensor.partition(".")[0]
        if dev in self.deployment.devices:
            self._last_seen[dev] = now
            if self._online.get(dev) is not True:
                self._set_online_into(out, dev, True, now, "")

    def device_seen(self, device: str, now: float) -> Outputs:
        """A heartbeat (or any message) from ``device`` (name or esp_id)."""
        out = self._begin(now)
        dev = self._device(device)
        if dev is None:
            return out
        self._last_seen[dev] = now
        if self._online.get(dev) is not True:
            self._set_online_into(out, dev, True, now, "")
        return out

    def device_offline(self, device: str, now: float, reason: str = "") -> Outputs:
        """``device`` went offline (last will, or a test step)."""
        out = self._begin(now)
        dev = self._device(device)
        if dev is None:
            return out
        out.extend(self._set_online(dev, False, now, reason))
        return out

    def actuator_reported(self, ref: str, value: float, now: float) -> Outputs:
        """The state the firmware reports for an actuator (duty 0.0-1.0). A report of
        an actuator on that an interlock forbids is corrected: the guard switches it
        off (an OFF in ``sent`` and a safety event, code INTERLOCK)."""
        out = self._begin(now)
        out.extend(self._from_guard(self.guard.actuator_reported(ref, value, now), now))
        dev = ref.split(".", 1)[0]
        if dev in self.deployment.devices:
            self._last_seen[dev] = now
            out.extend(self._set_online(dev, True, now, ""))
        out.extend(self._decide(self.engine.actuator_reported, ref, value, now))
        return out

    def command(self, cmd: Command, now: float) -> Outputs:
        """A manual command (person, CLI, WebSocket): guarded like any other."""
        out = self._begin(now)
        out.extend(self._guarded(cmd, now))
        return out

    def emergency_stop(self, target: str, reason: str, who: str, now: float) -> Outputs:
        """Latch an emergency stop for ``"all"`` or one device."""
        out = self._begin(now)
        out.extend(self._from_guard(self.guard.emergency_stop(target, reason, who, now), now,
                                    Code.EMERGENCY_STOP_ACTIVE))
        return out

    def reset(self, target: str, who: str, reason: str, now: float) -> Outputs:
        """Release an emergency stop. Turns nothing on: a ``while`` rule that still
        holds takes its actuators again on the next fresh reading of one of its sensors."""
        out = self._begin(now)
        done = self.guard.reset(target, who, reason, now)
        for em in done.emergencies:
            if not em.active:
                self._reset_at[em.target] = now
        out.extend(done)
        return out

    def tick(self, now: float) -> Outputs:
        """Advance time: offline detection, guard leases/for:-ends, rule timers."""
        out = self._begin(now)
        if not self._assume_online and self._start is not None:
            after = self.deployment.safety.defaults.offline_after
            gone: list[str] = []
            while self._offline_due() is not None:
                heap = self._offline_heap  # (re)built by _offline_due
                dev = heap[0][1]
                last = self._last_seen.get(dev, self._start)
                if now - last < after:
                    break
                heapq.heappop(heap)
                self._in_heap.discard(dev)
                gone.append(dev)
            gone.sort(key=self._order.__getitem__)  # in the device map's order
            for dev in gone:
                seen = "never seen" if dev not in self._last_seen else f"no heartbeat or data for {after:g}s"
                self._set_online_into(out, dev, False, now, seen)
        out.extend(self._from_guard(self.guard.tick(now), now))
        self._decide_into(out, self.engine.tick, now)
        return out

    def _offline_due(self) -> float | None:
        """When the next device goes offline unless heard from (None: none can)."""
        if self._assume_online or self._start is None:
            return None
        after = self.deployment.safety.defaults.offline_after
        start, last_seen, online = self._start, self._last_seen, self._online
        if self._heap_dirty:
            self._heap_dirty = False
            self._offline_heap = [(last_seen.get(dev, start) + after, dev)
                                  for dev in self.deployment.devices if online.get(dev) is not False]
            heapq.heapify(self._offline_heap)
            self._in_heap = {dev for _, dev in self._offline_heap}
        heap = self._offline_heap
        while heap:
            t, dev = heap[0]
            if online.get(dev) is False:
                heapq.heappop(heap)
                self._in_heap.discard(dev)
                continue
            actual = last_seen.get(dev, start) + after
            if actual != t:  # seen since: re-key
                heapq.heapreplace(heap, (actual, dev))
                continue
            return t
        return None

    def next_due(self) -> float | None:
        """Earliest instant ``tick`` has something to do (None: nothing pending).
        Cheap (no scan of every device or actuator): the server asks after every message."""
        best = self.engine.next_due()
        for t in (self.guard.next_due(), self._offline_due()):
            if t is not None and (best is None or t < best):
                best = t
        return best

    # ------------------------------------------------------------------ lifecycle
    def reload(self, deployment: Deployment, now: float) -> Outputs:
        """Switch to a checked deployment, carrying over every piece of state."""
        with gcpause.paused():
            return self._reload(deployment, now)

    def _reload(self, deployment: Deployment, now: float) -> Outputs:
        out = self._begin(now)
        self.deployment = deployment
        self._order = {dev: i for i, dev in enumerate(deployment.devices)}
        self._heap_dirty = True
        self.guard.reload(deployment)
        for dev in list(self._online):
            if dev not in deployment.devices:
                del self._online[dev]
                self._last_seen.pop(dev, None)
        if self._assume_online:
            for dev in deployment.devices:
                if dev not in self._online:
                    self._online[dev] = True
                    self._last_seen[dev] = now
                    out.extend(self._decide(self.engine.device_state, dev, True, now))
        out.extend(self._decide(self.engine.reload, deployment, now))
        out.events.extend(self._compile_events(now))
        out.events.append(Event(now, "reload", "info", "", f"rules version {self.version} loaded",
                                {"version": self.version, "rules": len(deployment.rules)}))
        return out

    def snapshot(self) -> dict[str, object]:
        """JSON-able state of engine, guard and device liveness."""
        return {
            "engine": self.engine.snapshot(),
            "guard": self.guard.snapshot(),
            "last_seen": dict(self._last_seen),
            "start": self._start,
            "unheld": {ref: [u.rule, str(u.code), u.since, None if u.origin is None else str(u.origin)]
                       for ref, u in self._unheld.items()},
            "reset_at": dict(self._reset_at),
        }

    def restore(self, data: dict[str, object]) -> None:
        """Load a snapshot (device online flags are not restored: boards must be seen again)."""
        # the guard first and on its own: emergency latches must survive even a
        # snapshot whose rule part is unreadable
        try:
            self.guard.restore(dict(data.get("guard") or {}))  # type: ignore[call-overload]
        except (TypeError, ValueError, AttributeError) as e:
            raise EngineError(f"cannot restore the safety state: {e}") from e
        try:
            self.engine.restore(dict(data.get("engine") or {}))  # type: ignore[call-overload]
            self._last_seen = {k: float(v) for k, v in dict(data.get("last_seen") or {}).items()}  # type: ignore[call-overload]
            self._heap_dirty = True
            start = data.get("start")
            if isinstance(start, int | float):
                self._start = float(start)
            self._unheld = {str(ref): _Unheld(str(u[0]), Code(str(u[1])), float(u[2]),
                                              Code(str(u[3])) if len(u) > 3 and str(u[3]) in Code.__members__
                                              else None)
                            for ref, u in dict(data.get("unheld") or {}).items()  # type: ignore[call-overload]
                            if str(u[1]) in Code.__members__}
            self._reset_at = {str(k): float(v) for k, v in dict(data.get("reset_at") or {}).items()}  # type: ignore[call-overload]
        except (TypeError, ValueError, AttributeError) as e:
            raise EngineError(f"cannot restore state: {e}") from e
