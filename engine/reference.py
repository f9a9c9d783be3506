"""A plain-Python reference evaluator: the same semantics as engine.core.Engine,
decided by walking every rule's condition tree on every step (simple, obviously
correct, slow). The differential test checks that both decide the same.

The truth of conditions is computed here independently of the Rete network: every
leaf is asked its three-valued truth from its ``engine.conditions`` entry on every
step (stateful leaves, with ``for:``/``hysteresis``/``count``, keep their state
here), and ``all``/``any``/``not`` are folded with Kleene's logic. What happens once
a rule's truth is known (edges, levels, cooldowns, actions, arbitration) is the
shared ``BaseEngine``.
"""

from __future__ import annotations

from engine import compiler as C
from engine.conditions import FALSE, TRUE, LeafState, Truth, kind_of, truth_of
from engine.core import BaseEngine
from engine.model import Condition, Deployment


class ReferenceEngine(BaseEngine):
    """Same API as Engine; a linear scan over all rules for every input."""

    def __init__(self, deployment: Deployment, *, start: float | None = None, version: str = "") -> None:
        self._states: dict[str, LeafState] = {}  # stateful leaves and triggers, by key
        self._raised: set[str] = set()
        super().__init__(deployment, start=start, version=version or "reference")

    # every distinct leaf of every rule (one state per key, as the Rete engine keeps)
    def _leaves(self) -> dict[str, Condition]:
        out: dict[str, Condition] = {}
        for r in self._rules.values():
            for leaf in C.leaves(r.condition):
                out.setdefault(C.leaf_key(leaf), leaf)
        return out

    def _state(self, key: str, leaf: Condition) -> LeafState:
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = LeafState(leaf)
        st.leaf = leaf
        return st

    def _advance(self, now: float) -> set[str]:
        self._update_leaves(now, ())
        return set(self._rules)

    def _update_leaves(self, now: float, read: tuple[str, ...]) -> None:
        for key, leaf in self._leaves().items():
            kind = kind_of(leaf)
            if kind.trigger:
                st = self._state(key, leaf)
                if st.nxt is None:
                    start = self._start if self._start is not None else now
                    st.nxt = kind.first_pulse(leaf, start, now, self._tzinfo)
                continue
            if kind.stateful(leaf):
                reading = any(s in read for s in kind.sensors(leaf))
                st = self._state(key, leaf)
                st.value = kind.evaluate(leaf, st, self, now, reading)[0]

    def _leaf(self, leaf: Condition, now: float) -> Truth:
        kind = kind_of(leaf)
        key = C.leaf_key(leaf)
        if kind.trigger:
            return TRUE if key in self._raised else FALSE
        if kind.stateful(leaf):
            st = self._states.get(key)
            return st.value if st is not None else FALSE
        return kind.evaluate(leaf, LeafState(leaf), self, now, False)[0]

    def _tri(self, rule: str) -> Truth:
        now = self._now if self._now is not None else 0.0
        return truth_of(self._rules[rule].condition, lambda leaf: self._leaf(leaf, now))

    def _truth(self, rule: str) -> bool:
        return self._tri(rule) == TRUE

    def _false(self, rule: str) -> bool:
        return self._tri(rule) == FALSE

    def _pulse(self, now: float, on: bool) -> set[str]:
        if not on:
            was = bool(self._raised)
            self._raised = set()
            return set(self._rules) if was else set()
        for key, leaf in self._leaves().items():
            kind = kind_of(leaf)
            if not kind.trigger:
                continue
            st = self._state(key, leaf)
            if st.nxt is not None and st.nxt <= now and key not in self._raised:
                self._raised.add(key)
                st.nxt = kind.next_pulse(leaf, st.nxt, now, self._tzinfo)
        return set(self._rules) if self._raised else set()

    def _on_sensor(self, ref: str, now: float, reading: bool) -> set[str]:
        self._update_leaves(now, (ref,) if reading else ())
        return set(self._rules)

    def _on_device(self, device: str, now: float) -> set[str]:
        return set(self._rules)

    def _on_actuator(self, ref: str, now: float) -> set[str]:
        return set(self._rules)

    def _truth_due(self) -> float | None:
        now = self._now if self._now is not None else 0.0
        cands: list[float] = []
        for key, leaf in self._leaves().items():
            kind = kind_of(leaf)
            if kind.trigger:
                st = self._states.get(key)
                if st is not None and st.nxt is not None:
                    cands.append(st.nxt)
                continue
            scratch = LeafState(leaf)
            st = self._states.get(key)
            if st is not None:  # asked on a copy: asking changes nothing
                scratch.load(st.dump())
            due = kind.evaluate(leaf, scratch, self, now, False)[1]
            if due is not None and due > now:
                cands.append(due)
        return min(cands) if cands else None

    def _truth_snapshot(self) -> dict[str, object]:
        return {"atoms": {k: st.dump() for k, st in self._states.items()}}

    def _truth_restore(self, d: dict[str, object], now: float) -> None:
        atoms = dict(d.get("atoms") or {})  # type: ignore[call-overload]
        leaves = self._leaves()
        self._states = {}
        for k, raw in atoms.items():
            if k in leaves:
                self._state(k, leaves[k]).load(raw)

    def _truth_reload(self, dep: Deployment, now: float) -> None:
        keys = self._leaves()
        self._states = {k: v for k, v in self._states.items() if k in keys}
