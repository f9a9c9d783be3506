"""``all``, ``any`` and ``not``: entries like any other, made of conditions.
Three-valued (Kleene): see engine.conditions.base.all_of/any_of/not_of."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.conditions.base import S_CONDITION, Kind, obj
from engine.model import All, Any_, Condition, Not

if TYPE_CHECKING:
    from engine.config.fields import Ctx
    from engine.config.source import YMap


def _items(m: YMap, ctx: Ctx, key: str) -> tuple[Condition, ...] | None:
    from engine.conditions import build_condition

    ctx.keys(m, (key,), f"an {key!r} condition")
    q = ctx.seq(m.values[key], f"{key!r}")
    if q is None:
        return None
    if not q.items:
        ctx.error("K204", f"{key!r} needs at least one condition", q.pos)
        return None
    items = tuple(c for c in (build_condition(i, ctx) for i in q.items) if c is not None)
    return items or None  # the bad items are reported and left out


class AllKind(Kind):
    name = "all"
    selectors = ("all",)
    keys = ("all",)
    model = (All,)
    composite = True
    schema = obj({"all": {"type": "array", "items": S_CONDITION, "minItems": 1}}, ["all"])
    doc = ("True when every listed condition is true; false when one is false; otherwise unknown. "
           "A bare list means `all`.")
    example = "all:\n  - {sensor: north.air_temp, above: 28}\n  - {sensor: north.humidity, below: 60}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        items = _items(m, ctx, "all")
        return None if items is None else All(items, m.pos)

    def describe(self, c: All) -> str:
        from engine.conditions import describe

        return "all of (" + "; ".join(describe(i) for i in c.items) + ")"


class AnyKind(Kind):
    name = "any"
    selectors = ("any",)
    keys = ("any",)
    model = (Any_,)
    composite = True
    schema = obj({"any": {"type": "array", "items": S_CONDITION, "minItems": 1}}, ["any"])
    doc = ("True when at least one listed condition is true (even when another is unknown); false "
           "when all are false; otherwise unknown.")
    example = "any:\n  - {sensor: north.air_temp, above: 35}\n  - {device: north, is: offline}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        items = _items(m, ctx, "any")
        return None if items is None else Any_(items, m.pos)

    def describe(self, c: Any_) -> str:
        from engine.conditions import describe

        return "any of (" + "; ".join(describe(i) for i in c.items) + ")"


class NotKind(Kind):
    name = "not"
    selectors = ("not",)
    keys = ("not",)
    model = (Not,)
    composite = True
    schema = obj({"not": S_CONDITION}, ["not"])
    doc = ("True when the inner condition is false, unknown when it is unknown (triggers are not "
           "allowed inside).")
    example = "not: {time: {after: \"22:00\", before: \"06:00\"}}"

    def build(self, m: YMap, ctx: Ctx) -> Condition | None:
        from engine.conditions import build_condition

        ctx.keys(m, ("not",), "a 'not' condition")
        saved = ctx.triggers_allowed
        ctx.triggers_allowed = False  # "not at 06:30" is not an instant
        try:
            item = build_condition(m.values["not"], ctx, under_not=True)
        finally:
            ctx.triggers_allowed = saved
        return None if item is None else Not(item, m.pos)

    def describe(self, c: Not) -> str:
        from engine.conditions import describe

        return f"not ({describe(c.item)})"


ALL = AllKind()
ANY = AnyKind()
NOT = NotKind()
