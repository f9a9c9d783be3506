"""A plain-Python reference evaluator: the same semantics as engine.core.Engine,
decided by walking every rule's condition tree on every step (simple, obviously
correct, slow). The differential test checks that both decide the same.

Only the truth of conditions is computed here independently; what happens once a
rule's truth is known (edges, levels, cooldowns, actions, arbitration) is the
shared ``BaseEngine``.
"""

from __future__ import annotations

from engine import compiler as C
from engine.core import BaseEngine
from engine.model import (
    ActuatorIs,
    All,
    Any_,
    At,
    Change,
    Comparison,
    Condition,
    Deployment,
    DeviceIs,
    Difference,
    Every,
    NoData,
    Not,
    TimeWindow,
)


class ReferenceEngine(BaseEngine):
    """Same API as Engine; a linear scan over all rules for every input."""

    def __init__(self, deployment: Deployment, *, start: float | None = None, version: str = "") -> None:
        self._latch: dict[str, bool] = {}
        self._since: dict[str, float] = {}
        self._next: dict[str, float] = {}
        self._raised: set[str] = set()
        self._values: dict[str, bool] = {}
        super().__init__(deployment, start=start, version=version or "reference")

    # every leaf of every rule, recomputed on every step
    def _leaves(self) -> list[Condition]:
        return [leaf for r in self._rules.values() for leaf in C.leaves(r.condition)]

    def _advance(self, now: float) -> set[str]:
        self._update_leaves(now)
        return set(self._rules)

    def _update_leaves(self, now: float) -> None:
        for leaf in self._leaves():
            key = C.leaf_key(leaf)
            if isinstance(leaf, At | Every):
                if key not in self._next:
                    start = self._start if self._start is not None else now
                    if isinstance(leaf, At):
                        n = C.next_at(leaf.minute, start - 1e-3, self._tzinfo)
                        self._next[key] = n if n >= now else C.next_at(leaf.minute, now - 1e-3, self._tzinfo)
                    else:
                        self._next[key] = C.next_every(start, leaf.interval, now)
                continue
            if isinstance(leaf, Comparison | Difference) and (leaf.for_ > 0 or leaf.hysteresis > 0):
                self._values[key] = self._timed_compare(key, leaf, now)

    def _value_of(self, leaf: Comparison | Difference, now: float) -> float | None:
        if isinstance(leaf, Comparison):
            return self.usable(leaf.sensor, now)
        a, b = self.usable(leaf.a, now), self.usable(leaf.b, now)
        return None if a is None or b is None else C.normalise(a - b)

    def _timed_compare(self, key: str, leaf: Comparison | Difference, now: float) -> bool:
        v = self._value_of(leaf, now)
        thr = C.norm_threshold(leaf.value)
        was = self._latch.get(key, False)
        if v is None:
            latched = False
        elif was:
            latched = C.hold_compare(leaf.op, v, thr, leaf.hysteresis)
        else:
            latched = C.compare(leaf.op, v, thr)
        self._latch[key] = latched
        if not latched:
            self._since.pop(key, None)
            return False
        since = self._since.setdefault(key, now)
        return now - since >= leaf.for_

    def _leaf(self, leaf: Condition, now: float) -> bool:
        key = C.leaf_key(leaf)
        if isinstance(leaf, At | Every):
            return key in self._raised
        if isinstance(leaf, Comparison | Difference):
            if leaf.for_ > 0 or leaf.hysteresis > 0:
                return self._values.get(key, False)
            v = self._value_of(leaf, now)
            return v is not None and C.compare(leaf.op, v, C.norm_threshold(leaf.value))
        if isinstance(leaf, Change):
            cur = self.usable(leaf.sensor, now)
            vals = self.window(leaf.sensor, leaf.within, now)
            if cur is None or not vals:
                return False
            d = C.normalise(cur - min(vals) if leaf.direction == "rises" else max(vals) - cur)
            return d is not None and d >= leaf.amount
        if isinstance(leaf, NoData):
            start = self._start if self._start is not None else now
            return now - self._last_data.get(leaf.sensor, start) >= leaf.duration
        if isinstance(leaf, DeviceIs):
            return self._devices.get(leaf.device, -1) == int(leaf.online)
        if isinstance(leaf, ActuatorIs):
            v = self._actuators.get(leaf.actuator)
            return v is not None and (v > 0) == leaf.on
        if isinstance(leaf, TimeWindow):
            return C.in_window(leaf, now, self._tzinfo)
        return False

    def _eval(self, c: Condition, now: float) -> bool:
        if isinstance(c, All):
            return all([self._eval(i, now) for i in c.items])
        if isinstance(c, Any_):
            return any([self._eval(i, now) for i in c.items])
        if isinstance(c, Not):
            return not self._eval(c.item, now)
        return self._leaf(c, now)

    def _truth(self, rule: str) -> bool:
        now = self._now if self._now is not None else 0.0
        return self._eval(self._rules[rule].condition, now)

    def _pulse(self, now: float, on: bool) -> set[str]:
        if not on:
            was = bool(self._raised)
            self._raised = set()
            return set(self._rules) if was else set()
        for leaf in self._leaves():
            if isinstance(leaf, At | Every):
                key = C.leaf_key(leaf)
                n = self._next.get(key)
                if n is not None and n <= now and key not in self._raised:
                    self._raised.add(key)
                    if isinstance(leaf, At):
                        self._next[key] = C.next_at(leaf.minute, now, self._tzinfo)
                    else:
                        while self._next[key] <= now:
                            self._next[key] += max(leaf.interval, 1e-3)
        return set(self._rules) if self._raised else set()

    def _on_sensor(self, ref: str, now: float) -> set[str]:
        self._update_leaves(now)
        return set(self._rules)

    def _on_device(self, device: str, now: float) -> set[str]:
        return set(self._rules)

    def _on_actuator(self, ref: str, now: float) -> set[str]:
        return set(self._rules)

    def _truth_due(self) -> float | None:
        now = self._now if self._now is not None else 0.0
        cands: list[float] = list(self._next.values())
        for ref in self._readings:
            t = self._stale_at(ref)
            if t is not None and t > now:
                cands.append(t)
        for leaf in self._leaves():
            key = C.leaf_key(leaf)
            if isinstance(leaf, Comparison | Difference) and key in self._since:
                if now - self._since[key] < leaf.for_:
                    cands.append(self._since[key] + leaf.for_)
            elif isinstance(leaf, Change):
                ts = [t for t, _ in self._history.get(leaf.sensor, ()) if now - t < leaf.within]
                if ts:
                    cands.append(min(ts) + leaf.within)
            elif isinstance(leaf, NoData):
                start = self._start if self._start is not None else now
                t = self._last_data.get(leaf.sensor, start) + leaf.duration
                if t > now:
                    cands.append(t)
            elif isinstance(leaf, TimeWindow):
                cands.append(C.next_window_change(leaf, now, self._tzinfo))
        return min(cands) if cands else None

    def _truth_snapshot(self) -> dict[str, object]:
        return {"latch": dict(self._latch), "since": dict(self._since), "next": dict(self._next)}

    def _truth_restore(self, d: dict[str, object], now: float) -> None:
        self._latch = dict(d.get("latch") or {})  # type: ignore[call-overload]
        self._since = dict(d.get("since") or {})  # type: ignore[call-overload]
        self._next = dict(d.get("next") or {})  # type: ignore[call-overload]

    def _truth_reload(self, dep: Deployment, now: float) -> None:
        keys = {C.leaf_key(leaf) for leaf in self._leaves()}
        self._latch = {k: v for k, v in self._latch.items() if k in keys}
        self._since = {k: v for k, v in self._since.items() if k in keys}
        self._next = {k: v for k, v in self._next.items() if k in keys}
