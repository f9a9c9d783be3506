"""Dependencies that could break a fresh install: the private internals of aiomqtt and
paho that engine/adapters/mqtt.py relies on, the pins that keep them, and the
pure-Python YAML path taken where ruamel.yaml.clib is missing."""

from __future__ import annotations

import asyncio
import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from engine.adapters import mqtt
from engine.config import load_deployment, source

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}


@pytest.mark.parametrize("name", ["aiomqtt", "paho-mqtt"])
def test_the_mqtt_libraries_are_pinned_below_their_next_major(name: str) -> None:
    req = _requirements()[name]
    installed = Version(importlib.metadata.version(name))
    uppers = [Version(s.version) for s in req.specifier if s.operator == "<"]
    assert uppers, f"{name} must be pinned below its next major: mqtt.py uses its private internals"
    assert uppers[0] == Version(f"{installed.major + 1}"), f"{name}: pin <{installed.major + 1}"
    assert installed in req.specifier, f"{name} {installed} is outside pyproject's {req}"


def test_every_installed_dependency_is_inside_the_pins() -> None:
    wrong = []
    for name, req in _requirements().items():
        installed = importlib.metadata.version(name)
        if not req.specifier.contains(installed, prereleases=True):
            wrong.append(f"{name} {installed} (pyproject: {req})")
    assert not wrong, wrong


async def test_the_private_internals_mqtt_uses_are_there() -> None:
    """If this fails after an upgrade, aiomqtt or paho moved an internal that
    engine/adapters/mqtt.py uses: pin below that version, or port the adapter."""
    link = mqtt.MqttLink("mqtt://127.0.0.1:1", "kaiser-test", [], lambda t, p, r: None)
    client = link._make_client()  # not connected: only the objects are looked at
    problems: list[str] = []

    def need(obj: Any, attr: str, what: str, check: Any = None) -> None:
        if not hasattr(obj, attr) or (check is not None and not check(getattr(obj, attr))):
            problems.append(f"{what}.{attr} ({type(obj).__module__}.{type(obj).__name__})")

    need(client, "_client", "aiomqtt.Client")  # the paho client: non-blocking publish, on_message
    need(client, "_queue", "aiomqtt.Client",  # messages a persistent session delivers with CONNACK
         lambda q: callable(getattr(q, "empty", None)) and callable(getattr(q, "get_nowait", None)))
    need(client, "_disconnected", "aiomqtt.Client", lambda f: isinstance(f, asyncio.Future))
    paho = getattr(client, "_client", None)
    if paho is not None:
        for attr in ("publish", "disconnect", "want_write", "loop_read"):
            need(paho, attr, "paho.Client", callable)
        need(paho, "_sock", "paho.Client", lambda s: True)
        assert "on_message" in dir(paho), "paho.Client.on_message"
        # buffer_reads installed itself: paho's reads go through the 64 KB buffer
        recv = getattr(paho, "_sock_recv", None)
        if not isinstance(getattr(recv, "__self__", None), mqtt._ReadBuffer):
            problems.append("paho.Client._sock_recv (the read buffer was not installed)")
    assert hasattr(aiomqtt, "Will") and hasattr(aiomqtt.ProtocolVersion, "V311")
    assert not problems, (
        "engine/adapters/mqtt.py relies on internals this aiomqtt/paho no longer has: "
        f"{', '.join(problems)}. Pin below this version in pyproject.toml or port the adapter.")


def test_the_pure_python_yaml_path_reads_the_example_deployment_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ruamel.yaml.clib (a platform without its wheel) ruamel's pure-Python
    composer reads the files: the same deployment and findings, positions included."""
    assert source._CLoader is not None, "ruamel.yaml.clib is a dependency: the fast path should be there"
    fast = load_deployment(REPO / "rules")
    monkeypatch.setattr(source, "_CLoader", None)
    slow = load_deployment(REPO / "rules")
    assert slow[0] == fast[0]
    assert [d.text() for d in slow[1]] == [d.text() for d in fast[1]]
