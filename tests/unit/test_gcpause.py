"""The collector is paused while a deployment is built, and always comes back."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from engine import gcpause
from engine.config.lint import lint
from engine.pipeline import Kaiser

REPO = Path(__file__).resolve().parents[2]


def test_building_a_deployment_leaves_the_collector_on() -> None:
    assert gc.isenabled()
    deployment, _ = lint(REPO / "rules")
    Kaiser(deployment)
    assert gc.isenabled()


def test_an_error_inside_still_turns_it_back_on() -> None:
    with pytest.raises(ValueError), gcpause.paused():
        assert not gc.isenabled()
        raise ValueError("a broken build")
    assert gc.isenabled()


def test_nested_and_already_off() -> None:
    with gcpause.paused():
        with gcpause.paused():
            pass
        assert not gc.isenabled()  # the inner one found it off and leaves it off
    assert gc.isenabled()
    gc.disable()
    try:
        with gcpause.paused():
            pass
        assert not gc.isenabled()  # whoever turned it off turns it on
    finally:
        gc.enable()


def test_what_is_frozen_stays_frozen() -> None:
    """The server freezes its start-up heap (engine/app.py _tune_gc); a reload's
    pause must not unfreeze it."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gcpause.paused():
            _ = [[i] for i in range(1000)]
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
