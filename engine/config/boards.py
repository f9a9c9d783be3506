"""Pin tables of the ESP32 boards El Trabajante runs on (PROTOCOL.md, "Boards and pins").

A device that names its ``board`` gets pin checks in ``kaiser lint``; a device
without one gets none (we cannot know its pins).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Board:
    """One board's pins. ``input_only`` pins can read but never drive an actuator."""

    name: str
    title: str
    reserved: frozenset[int]
    usable: frozenset[int]
    input_only: frozenset[int]
    i2c: tuple[int, int]  # (SDA, SCL)
    onewire: int
    max_sensors: int
    max_actuators: int
    #: pins on ADC1: analog probes read only there (ADC2 is taken by Wi-Fi)
    adc: frozenset[int] = frozenset()
    #: pins wired to the SPI flash (also in ``reserved``): touching them crashes the board
    flash: frozenset[int] = frozenset()

    def known(self, gpio: int) -> bool:
        return gpio in self.reserved or gpio in self.usable or gpio in self.input_only

    def pins_text(self) -> str:
        """The usable pins as people write them: ``4, 5, 14-19, 21``."""
        return pin_ranges(sorted(self.usable))


def pin_ranges(pins: list[int]) -> str:
    """``[4, 5, 14, 15, 16]`` -> ``"4-5, 14-16"``."""
    out: list[str] = []
    start = prev = None
    for p in [*pins, None]:
        if start is not None and (p is None or prev is None or p != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if p is not None and start is None:
            start = p
        prev = p
    return ", ".join(out)


BOARDS: dict[str, Board] = {
    "esp32dev": Board(
        name="esp32dev",
        title="ESP32 DevKit (esp32dev)",
        reserved=frozenset({0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13}),
        usable=frozenset({4, 5, 14, 15, 16, 17, 18, 19, 21, 22, 23, 25, 26, 27, 32, 33}),
        input_only=frozenset({34, 35, 36, 37, 38, 39}),
        i2c=(21, 22),
        onewire=4,
        max_sensors=20,
        max_actuators=12,
        adc=frozenset({32, 33, 34, 35, 36, 37, 38, 39}),
        flash=frozenset({6, 7, 8, 9, 10, 11}),
    ),
    "xiao_esp32c3": Board(
        name="xiao_esp32c3",
        title="Seeed XIAO ESP32-C3 (xiao_esp32c3)",
        reserved=frozenset({0, 1, 3}),
        usable=frozenset({2, 4, 5, 6, 7, 8, 9, 10, 21}),
        input_only=frozenset(),
        i2c=(4, 5),
        onewire=6,
        max_sensors=10,
        max_actuators=6,
        adc=frozenset({2, 3, 4}),
    ),
}


#: sensor types whose raw value is an ADC reading (PROTOCOL.md: "Analog sensors")
ANALOG_TYPES = frozenset({"ph", "ec", "moisture"})


def board(name: str | None) -> Board | None:
    """The pin table for ``name`` (case-insensitive), or None when unknown or unnamed."""
    if not name:
        return None
    return BOARDS.get(str(name).strip().lower())
