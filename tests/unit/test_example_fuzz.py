"""Hypothesis: any mutation of the example deployment either loads or yields
diagnostics; ``load_deployment`` and ``run_checks`` never raise, and never hit
their internal-error fallbacks (K199 in the loader, K499 in the checks).

Mutations: delete a key, change a scalar's type, swap two values, duplicate a
list item, truncate the text, insert garbage into the text.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML

from engine.config import load_deployment
from engine.config.checks import run_checks
from engine.diagnostics import Diagnostic

EXAMPLE = Path(__file__).resolve().parents[2] / "rules"
FILES = sorted(p.name for p in EXAMPLE.glob("*.yaml"))
TEXTS = {name: (EXAMPLE / name).read_text(encoding="utf-8") for name in FILES}
TREES = {name: YAML(typ="safe").load(text) for name, text in TEXTS.items()}

Path_ = tuple[Any, ...]


def _paths(node: Any, here: Path_ = ()) -> list[Path_]:
    """Every path to a value below the root: mapping keys and list indices."""
    out: list[Path_] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*here, k))
            out.extend(_paths(v, (*here, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*here, i))
            out.extend(_paths(v, (*here, i)))
    return out


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node


def _parent(root: Any, path: Path_) -> Any:
    for step in path[:-1]:
        root = root[step]
    return root


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["on", "off", "toggle", "5m", "06:30", "north.fan", "ESP_12AB34", "[]",
                                           "north.climate", "0x44", "-1", "1e309", "~"]),
    st.just([]), st.just({}), st.lists(st.integers(0, 50), max_size=3),
)


def _dump(tree: Any) -> str:
    buf = io.StringIO()
    y = YAML(typ="safe")
    y.default_flow_style = False
    y.dump(tree, buf)
    return buf.getvalue()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str]:
    """(file name, new text) for one mutation of one example file."""
    name = draw(st.sampled_from(FILES))
    kind = draw(st.sampled_from(["delete", "retype", "swap", "duplicate", "truncate", "garbage"]))
    text = TEXTS[name]
    if kind == "truncate":
        return name, text[: draw(st.integers(0, len(text)))]
    if kind == "garbage":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.one_of(st.text(max_size=12), st.sampled_from(
            ["\t", ":", "- ", "{", "]", "&a ", "*a", "!!python/object:os.system ", "\n  ", "---\n", "\x00", "\ufeff",
             "'", '"', "#", "? ", "|\n", "<<: *x\n"])))
        return name, text[:at] + junk + text[at:]
    tree = _copy(TREES[name])
    paths = _paths(tree)
    path = paths[draw(st.integers(0, len(paths) - 1))]
    parent = _parent(tree, path)
    key = path[-1]
    if kind == "delete":
        del parent[key]
    elif kind == "retype":
        parent[key] = draw(scalars)
    elif kind == "swap":
        other = paths[draw(st.integers(0, len(paths) - 1))]
        nested = path[: len(other)] == other or other[: len(path)] == path
        if nested:  # one holds the other: put a copy of the outer value in place of the inner
            inner = path if len(path) > len(other) else other
            outer = other if inner is path else path
            _parent(tree, inner)[inner[-1]] = _copy(_parent(tree, outer)[outer[-1]])
        else:
            other_parent = _parent(tree, other)
            a, b = parent[key], other_parent[other[-1]]
            parent[key], other_parent[other[-1]] = _copy(b), _copy(a)
    elif kind == "duplicate":
        if isinstance(parent, list):
            parent.insert(key, _copy(parent[key]))
        else:
            parent[f"{key}_copy"] = _copy(parent[key])
    return name, _dump(tree)


def _lint(folder: Path) -> list[Diagnostic]:
    deployment, found = load_deployment(folder, tz="Europe/Berlin")
    partial = any(d.is_error for d in found)
    return [*found, *run_checks(deployment, partial=partial)]


@given(mutated())
def test_any_mutation_loads_or_yields_diagnostics(case: tuple[str, str]) -> None:
    name, text = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rules"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("tests"))
        (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        found = _lint(folder)
    for d in found:
        assert isinstance(d, Diagnostic)
        assert d.severity in ("error", "warning")
        assert d.code not in ("K199", "K499"), d.text()
        assert d.message


def test_unmutated_example_is_clean() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rules"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("tests"))
        assert _lint(folder) == []
