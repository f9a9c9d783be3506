"""Firmware twins: pure models of El Trabajante boards, one class per generation.

A twin does with every server message what the real board does (read from the
firmware source: legacy = commit a464a94b, current = 0a9b54ff; each rule cites
the firmware function it comes from). It parses the way the firmware parses
(ArduinoJson 6 documents of fixed size, the actuator command text scanner), never
with Kaiser's own decoders, and answers on the real topics with the real
payloads. No I/O and no clock: every call passes ``now`` (Unix seconds).

    b = new_board("current", "ESP_12AB34", now=t)
    out = b.connect(t)                       # session announce + first heartbeat
    out = b.receive(topic, payload, t + 1)   # what the board publishes in answer
    out = b.tick(t + 60)                     # heartbeats, auto-offs, timeouts

``engine.firmware.mqtt.TwinFleet`` connects a set of twins to a real broker.
See docs/firmware-twin.md.
"""

from __future__ import annotations

from engine.firmware.actuators import Actuator, ActuatorConfig
from engine.firmware.board import Board, Sensor, topic_matches
from engine.firmware.current import CurrentBoard
from engine.firmware.legacy import LegacyBoard

GENERATIONS = ("legacy", "current")


def new_board(generation: str, esp_id: str, *, kaiser_id: str = "god", board_kind: str = "esp32dev",
              emergency_token: str | None = None, production: bool = False, now: float = 0.0,
              **extra: object) -> Board:
    """A freshly powered-on board of ``generation`` ("legacy" | "current").

    ``emergency_token``: the token stored in the board's NVS (legacy default: its
    esp id; current default: none). ``production``: a current board built with
    ``EMERGENCY_TOKEN_REQUIRED`` (refuses every emergency while no token is set).
    ``extra`` goes to :class:`CurrentBoard` (``transport``, ``broadcast_token``,
    ``approved``). Raises ValueError for an unknown generation or board kind.
    """
    if generation == "legacy":
        if extra:
            raise ValueError(f"legacy boards take no {', '.join(extra)}")
        return LegacyBoard(esp_id, kaiser_id=kaiser_id, board_kind=board_kind,
                           emergency_token=emergency_token, production=production, now=now)
    if generation == "current":
        return CurrentBoard(esp_id, kaiser_id=kaiser_id, board_kind=board_kind,
                            emergency_token=emergency_token, production=production, now=now,
                            **extra)  # type: ignore[arg-type]
    raise ValueError(f"unknown firmware generation {generation!r} (legacy or current)")


__all__ = ["GENERATIONS", "Actuator", "ActuatorConfig", "Board", "CurrentBoard", "LegacyBoard",
           "Sensor", "new_board", "topic_matches"]
