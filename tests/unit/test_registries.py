"""The condition and action registries: one entry per type, each one builds its
own documented example, and the loader dispatches through them."""

from __future__ import annotations

import typing

from engine import actions, conditions, model
from engine.config.fields import Ctx
from engine.config.source import parse_text
from engine.diagnostics import Diagnostic


def build(registry_build: typing.Callable[..., object], text: str) -> tuple[object, list[Diagnostic]]:
    out: list[Diagnostic] = []
    node = parse_text(text, "example.yaml", out)
    assert node is not None and out == []
    ctx = Ctx(out)
    return registry_build(node, ctx), out


def test_one_condition_entry_per_model_type() -> None:
    made = set()
    for c in conditions.REGISTRY:
        obj, out = build(conditions.build_condition, c.example)
        assert out == [], (c.name, [d.text() for d in out])
        made.add(type(obj))
        assert c.doc and c.schema["type"] == "object"
    assert made == set(typing.get_args(model.Condition))


def test_one_action_entry_per_model_type() -> None:
    made = set()
    for a in actions.REGISTRY:
        obj, out = build(actions.build_action, a.example)
        assert out == [], (a.name, [d.text() for d in out])
        made.add(type(obj))
        assert a.doc
    assert made == set(typing.get_args(model.Action))


def test_selectors_are_unique() -> None:
    assert len(set(conditions.SELECTORS)) == len(conditions.SELECTORS)
    assert len(set(actions.SELECTORS)) == len(actions.SELECTORS)


def test_change_and_no_data_win_over_plain_comparison() -> None:
    obj, _ = build(conditions.build_condition, "{sensor: n.t, rises_by: 2, within: 10m}")
    assert isinstance(obj, model.Change) and obj.direction == "rises" and obj.within == 600.0
    obj, _ = build(conditions.build_condition, "{sensor: n.t, no_data_for: 5m}")
    assert isinstance(obj, model.NoData)


def test_unknown_condition_and_action_suggest() -> None:
    obj, out = build(conditions.build_condition, "{sensr: n.t, above: 3}")
    assert obj is None and out[0].code == "K206" and out[0].hint == "did you mean 'sensor'?"
    obj, out = build(actions.build_action, "{notfy: hi}")
    assert obj is None and out[0].code == "K207" and out[0].hint == "did you mean 'notify'?"


def test_triggers_not_allowed_under_not() -> None:
    obj, out = build(conditions.build_condition, "not: {every: 5m}")
    assert obj is None and out[0].code == "K208" and "inside 'not'" in out[0].message


def test_action_states() -> None:
    for text, state in (("on", 1.0), ("off", 0.0), ("toggle", "toggle"), ("0.25", 0.25), ("1", 1.0)):
        obj, out = build(actions.build_action, f"{{actuator: n.f, set: {text}}}")
        assert out == [] and isinstance(obj, model.SetActuator) and obj.state == state


def test_docs_cover_every_code_and_registry_entry() -> None:
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    docs = (repo / "docs/rules.md").read_text() + (repo / "docs/configuration.md").read_text()
    sources = ["engine/config/loader.py", "engine/config/source.py", "engine/config/fields.py",
               "engine/config/settings.py", "engine/actions.py",
               *(str(p.relative_to(repo)) for p in sorted((repo / "engine/conditions").glob("*.py")))]
    codes = {c for f in sources for c in re.findall(r'"(K\d{3})"', (repo / f).read_text())}
    assert codes and {c for c in codes if f"| {c} |" not in docs} == set()
    rules_doc = (repo / "docs/rules.md").read_text()
    for c in conditions.REGISTRY:
        for s in c.selectors:
            assert f"{s}:" in rules_doc, s
    for a in actions.REGISTRY:
        assert f"{{{a.selector}:" in rules_doc, a.selector
