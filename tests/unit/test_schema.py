"""JSON Schemas: generated from the registries, committed in schemas/, and in
agreement with the loader on good and bad files."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from ruamel.yaml import YAML

from engine import actions, conditions
from engine.config import load_deployment
from engine.config.schema import FILE_SCHEMA, all_schemas, cmd_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"


def validator() -> Draft202012Validator:
    reg: Registry[Any] = Registry()
    for name, schema in all_schemas().items():
        reg = reg.with_resource(name, Resource.from_contents(schema))
    return Draft202012Validator(all_schemas()[FILE_SCHEMA], registry=reg)


def test_committed_schemas_are_current() -> None:
    assert cmd_schema(argparse.Namespace(out=str(SCHEMAS), check=True)) == 0


def test_check_fails_when_a_file_is_stale(tmp_path: Path) -> None:
    assert cmd_schema(argparse.Namespace(out=str(tmp_path), check=False)) == 0
    assert cmd_schema(argparse.Namespace(out=str(tmp_path), check=True)) == 0
    (tmp_path / "rules.schema.json").write_text("{}\n")
    assert cmd_schema(argparse.Namespace(out=str(tmp_path), check=True)) == 1


def test_every_schema_is_valid_draft_2020_12() -> None:
    for name, schema in all_schemas().items():
        Draft202012Validator.check_schema(schema)
        assert json.loads((SCHEMAS / name).read_text()) == schema


def test_schemas_cover_every_registry_entry() -> None:
    rules = json.loads((SCHEMAS / "rules.schema.json").read_text())
    defs = rules["$defs"]
    for c in conditions.REGISTRY:
        assert defs[f"condition_{c.name}"]["description"] == c.doc
        assert {"$ref": f"#/$defs/condition_{c.name}"} in defs["condition"]["anyOf"]
        assert set(defs[f"condition_{c.name}"]["properties"]) == set(c.keys)
    for a in actions.REGISTRY:
        assert defs[f"action_{a.name}"]["description"] == a.doc
        assert {"$ref": f"#/$defs/action_{a.name}"} in defs["action"]["anyOf"]
        assert set(defs[f"action_{a.name}"]["properties"]) == set(a.keys)


def test_example_deployment_matches_the_schema() -> None:
    v = validator()
    y = YAML(typ="safe")
    files = sorted((REPO / "rules").rglob("*.yaml"))
    assert files
    for f in files:
        errors = [e.message for e in v.iter_errors(y.load(f.read_text()))]
        assert errors == [], f


@pytest.mark.parametrize("text", [
    "rules:\n  - {name: a, when: {sensor: n.t, abov: 3}, then: [{notify: x}]}\n",
    "rules:\n  - {name: a, when: {every: 1m}, then: [{actuator: n.f, set: 1.5}]}\n",
    "rules:\n  - {name: a, when: {every: 1m}, then: [{notify: x}], while: {every: 1m}}\n",
    "rules:\n  - {name: A B, when: {every: 1m}, then: [{notify: x}]}\n",
    "rules:\n  - {name: a, when: {every: 1x}, then: [{notify: x}]}\n",
    "safety:\n  actuators:\n    n.f: {pwm: [0.1, 2]}\n",
    "safety:\n  interlocks:\n    - {name: i, never_together: [n.a]}\n",
    "devices:\n  n: {esp_id: E, actuators: {f: {gpio: 5, type: motor}}}\n",
    "tests:\n  - {name: t, steps: [{at: 0s}], expect: [{at: 1s, blocked: {actuator: n.f, reason: HOT}}]}\n",
    "rulez: []\n",
])
def test_schema_and_loader_agree_on_bad_files(tmp_path: Path, text: str) -> None:
    f = tmp_path / "a.yaml"
    f.write_text(text)
    assert list(validator().iter_errors(YAML(typ="safe").load(text))), "schema accepted it"
    _, diags = load_deployment(f)
    assert any(d.is_error for d in diags), "loader accepted it"


def test_toml_schema_accepts_the_defaults() -> None:
    toml = all_schemas()["kaiser-toml.schema.json"]
    v = Draft202012Validator(toml)
    assert not list(v.iter_errors({"kaiser": {"id": "god", "tz": "UTC"}, "store": {"retention": "90d"}}))
    assert list(v.iter_errors({"kaiser": {"idd": "god"}}))


GOLDEN = REPO / "tests" / "golden"
#: checks JSON Schema cannot express: low <= high, and triggers only in `when`
SCHEMA_GAPS = {"pwm-limit-reversed.bad.yaml", "trigger-in-while.bad.yaml", "trigger-under-not.bad.yaml",
               "computed-duty-unsorted.bad.yaml"}  # a JSON Schema cannot say "sorted by x"


def _golden(kind: str) -> list[Path]:
    return sorted(GOLDEN.glob(f"*.{kind}.yaml"))


@pytest.mark.parametrize("case", _golden("good"), ids=lambda p: p.name)
def test_golden_good_cases_match_the_schema(case: Path) -> None:
    assert [e.message for e in validator().iter_errors(YAML(typ="safe").load(case.read_text()))] == []


@pytest.mark.parametrize("case", [p for p in _golden("bad") if re.search(r"# expect: K2\d\d", p.read_text())
                                  and p.name not in SCHEMA_GAPS], ids=lambda p: p.name)
def test_golden_structure_errors_are_schema_errors_too(case: Path) -> None:
    assert list(validator().iter_errors(YAML(typ="safe").load(case.read_text())))
