"""Kaiser's pure pipeline: rule engine -> arbitration -> safety guard. No I/O.

``Kaiser(deployment)`` is the one thing the server (engine/app.py) and ``kaiser
test`` drive. Every method takes ``now`` (Unix seconds) and returns
``engine.model.Outputs``: ``sent`` holds the commands that passed the guard (to be
published), ``blocked`` every refused command (arbitration CONFLICT, loop-guard
RATE_LIMIT, or the guard's code), ``runs``/``notifications`` from the rules,
``events`` (one per block, conflict, suspension, emergency, online/offline),
``emergencies`` to publish. Nothing reaches ``sent`` without ``Guard.check``
(or the guard's own server-originated commands).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.core import Decisions, Engine
from engine.errors import EngineError
from engine.model import Allowed, Blocked, Code, Command, Deployment, Event, Outputs, Reading

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
        self.engine = Engine(deployment, start=start)
        self.guard = self._guard_factory(deployment, assume_online, start)
        self._last_seen: dict[str, float] = {}
        self._online: dict[str, bool] = {}
        self._started = False
        self._unheld: dict[str, Command] = {}  # actuator -> hold refused while its board was offline

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
        now = float(args[-1])
        try:
            decisions = step(*args)
        except EngineError as e:
            return Outputs(events=[Event(now, "engine", "critical", "", f"rule engine failed: {e}",
                                         {"error": str(e)})])
        return self._apply(decisions, now)

    def _apply(self, d: Decisions, now: float) -> Outputs:
        """Decisions -> guard -> Outputs."""
        out = Outputs(runs=list(d.runs), notifications=list(d.notifications), events=list(d.events))
        out.blocked.extend(d.blocked)
        for e in d.emergencies:
            out.extend(self._from_guard(self.guard.emergency_stop(e.target, e.reason, f"rule {e.rule}", now)))
        for cmd in d.commands:
            out.extend(self._guarded(cmd, now))
        return out

    def _from_guard(self, out: Outputs) -> Outputs:
        """Commands the guard issued itself (for:-end and max_runtime OFFs, renewals,
        emergency OFFs): the engine must know them, or a later `toggle` or an
        `actuator is` fallback would start from a state that no longer holds."""
        for a in out.sent:
            self.engine.commanded(a.command.actuator, a.command.value)
        return out

    def _guarded(self, cmd: Command, now: float) -> Outputs:
        out = Outputs()
        verdict = self.guard.check(cmd, now)
        self._unheld.pop(cmd.actuator, None)
        if isinstance(verdict, Allowed):
            out.sent.append(verdict)
            self.engine.commanded(verdict.command.actuator, verdict.command.value)
        else:
            out.blocked.append(verdict)
            out.events.append(self._block_event(verdict, now))
            if cmd.hold and verdict.code == Code.DEVICE_OFFLINE:
                # a `while` rule that is still true holds again when the board is back
                self._unheld[cmd.actuator] = cmd
        return out

    def _rehold(self, device: str, now: float) -> Outputs:
        """Re-send holds the guard refused while ``device`` was offline, for rules
        that still hold them."""
        out = Outputs()
        held = {ref for refs in self.engine.holds().values() for ref in refs}
        for ref, cmd in list(self._unheld.items()):
            if ref.split(".", 1)[0] != device:
                continue
            if ref in held and cmd.rule in self.engine.holds():
                out.extend(self._guarded(cmd, now))
            else:
                del self._unheld[ref]
        return out

    @staticmethod
    def _block_event(b: Blocked, now: float) -> Event:
        c = b.command
        who = f"rule {c.rule}" if c.rule else c.source
        return Event(now, "safety", "warning", c.actuator, f"{who}: {c.actuator} blocked ({b.code}): {b.reason}",
                     {"code": str(b.code), "rule": c.rule, "source": c.source, "value": c.value})

    def _set_online(self, device: str, online: bool, now: float, reason: str) -> Outputs:
        out = Outputs()
        if self._online.get(device) == online:
            return out
        self._online[device] = online
        self.guard.device_online(device, online, now)
        msg = f"device {device} is {'online' if online else 'offline'}" + (f": {reason}" if reason else "")
        out.events.append(Event(now, "device", "info" if online else "warning", device, msg,
                                {"online": online}))
        out.extend(self._decide(self.engine.device_state, device, online, now))
        if online and self._unheld:
            out.extend(self._rehold(device, now))
        return out

    # ------------------------------------------------------------------ inputs
    def receive(self, reading: Reading, now: float) -> Outputs:
        """One sensor reading (already routed to its ref)."""
        out = self._begin(now)
        self.guard.reading(reading)
        dev = reading.sensor.split(".", 1)[0]
        # a retained reading is the broker's old copy: it says nothing about liveness
        if dev in self.deployment.devices and not reading.retained:
            self._last_seen[dev] = now
            out.extend(self._set_online(dev, True, now, ""))
        out.extend(self._decide(self.engine.receive, reading, now))
        return out

    def device_seen(self, device: str, now: float) -> Outputs:
        """A heartbeat (or any message) from ``device`` (name or esp_id)."""
        out = self._begin(now)
        dev = self._device(device)
        if dev is None:
            return out
        self._last_seen[dev] = now
        out.extend(self._set_online(dev, True, now, ""))
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
        """The state the firmware reports for an actuator (duty 0.0-1.0)."""
        out = self._begin(now)
        self.guard.actuator_reported(ref, value, now)
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
        out.extend(self._from_guard(self.guard.emergency_stop(target, reason, who, now)))
        return out

    def reset(self, target: str, who: str, reason: str, now: float) -> Outputs:
        """Release an emergency stop (turns nothing on)."""
        out = self._begin(now)
        out.extend(self.guard.reset(target, who, reason, now))
        return out

    def tick(self, now: float) -> Outputs:
        """Advance time: offline detection, guard leases/for:-ends, rule timers."""
        out = self._begin(now)
        if not self._assume_online and self._start is not None:
            after = self.deployment.safety.defaults.offline_after
            for dev in self.deployment.devices:
                if self._online.get(dev) is False:
                    continue
                last = self._last_seen.get(dev, self._start)
                if now - last >= after:
                    seen = "never seen" if dev not in self._last_seen else f"no heartbeat or data for {after:g}s"
                    out.extend(self._set_online(dev, False, now, seen))
        out.extend(self._from_guard(self.guard.tick(now)))
        out.extend(self._decide(self.engine.tick, now))
        return out

    def next_due(self) -> float | None:
        """Earliest instant ``tick`` has something to do (None: nothing pending)."""
        cands = [t for t in (self.engine.next_due(), self.guard.next_due()) if t is not None]
        if not self._assume_online and self._start is not None:
            after = self.deployment.safety.defaults.offline_after
            for dev in self.deployment.devices:
                if self._online.get(dev) is not False:
                    cands.append(self._last_seen.get(dev, self._start) + after)
        return min(cands) if cands else None

    # ------------------------------------------------------------------ lifecycle
    def reload(self, deployment: Deployment, now: float) -> Outputs:
        """Switch to a checked deployment, carrying over every piece of state."""
        out = self._begin(now)
        self.deployment = deployment
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
            start = data.get("start")
            if isinstance(start, int | float):
                self._start = float(start)
        except (TypeError, ValueError, AttributeError) as e:
            raise EngineError(f"cannot restore state: {e}") from e
