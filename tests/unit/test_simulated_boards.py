"""``kaiser simulate``'s generic boards are ones real firmware of either
generation configures without refusing anything."""

from __future__ import annotations

import random

import pytest

from engine.demo import make_boards, simulated_devices


@pytest.mark.parametrize("firmware", ["legacy", "current", "mixed"])
def test_generic_simulated_boards_refuse_nothing(firmware: str) -> None:
    boards = make_boards(simulated_devices(range(4)), "god", random.Random(1), 1_796_000_000.0, firmware)
    assert {b.twin.generation for b in boards} == ({"legacy", "current"} if firmware == "mixed" else {firmware})
    for b in boards:
        assert b.twin.refusals == [], (b.twin.generation, b.twin.refusals)
        # legacy keeps no actuators in flash: it gets them with the server's first config
        assert [a.active for a in b.twin.actuators.values()] == ([True] if b.twin.generation == "current" else [])
        assert {g for g, s in b.twin.sensors.items() if s.active} == {14, 32}
