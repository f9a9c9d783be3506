"""``kaiser init DIR``: a small commented deployment to start from (one board, two
rules, one rule test) that lints clean under ``--strict`` and whose test passes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FILES: dict[str, str] = {
    "kaiser.toml": """\
# Server settings (docs/configuration.md). Every key has a default.
[kaiser]
id = "greenhouse"          # topics are kaiser/greenhouse/esp/...: the boards must use the same id
rules = "rules"            # every *.yaml below it is read together
tz = "UTC"                 # time windows, `at` triggers and CLI times; e.g. "Europe/Berlin"

[mqtt]
url = "mqtt://127.0.0.1:1883"   # "embedded" runs a broker inside Kaiser (laptops, demos)

[store]
path = "kaiser.duckdb"     # readings, commands, rule runs, events (kaiser query, kaiser why)
retention = "90d"

[websocket]
listen = "127.0.0.1:8765"  # status page http://127.0.0.1:8765/, /ws, /api/v1/, /metrics
""",
    "rules/devices.yaml": """\
# The device map: one El Trabajante board. Refs are DEVICE.NAME (house.air_temp).
# Editors: `kaiser schema --out schemas` writes JSON Schemas for completion (docs/editors.md).
devices:
  house:
    esp_id: ESP_12AB34           # printed by the board at boot
    board: esp32dev              # enables the pin checks of `kaiser lint`
    sensors:
      # a DS18B20 needs its 64-bit ROM code (the board lists it at boot)
      air_temp: {gpio: 4, type: DS18B20, onewire_address: "28FF641E8D3C0C79"}
      soil: {gpio: 34, type: moisture, calibration: {dry: 3200, wet: 1300}}
    actuators:
      fan: {gpio: 5, type: relay}
      drip: {gpio: 18, type: valve}
""",
    "rules/safety.yaml": """\
# Limits the guard enforces on every command, from rules and people alike.
safety:
  defaults:
    offline_after: 90s           # boards send a heartbeat every 60 s
  actuators:
    house.drip:
      max_runtime: 15m           # never water longer than this, whatever a rule says
      min_off: 10m
""",
    "rules/climate.yaml": """\
# Two rules. `kaiser lint` checks them; `kaiser test` runs rules/tests/.
rules:
  - name: fan-when-hot
    description: cool the house when the air is hot, with 2 degrees of hysteresis
    while: {sensor: house.air_temp, above: 28, hysteresis: 2}
    hold:
      - {actuator: house.fan, set: on}

  - name: water-when-dry
    description: ten minutes of drip irrigation when the soil stays dry for 5 minutes
    cooldown: 1h
    when: {sensor: house.soil, below: 30, for: 5m}
    then:
      - {actuator: house.drip, set: on, for: 10m}
      - {notify: "house soil at {house.soil} %: watering", level: info}
""",
    "rules/tests/climate_test.yaml": """\
# A rule test: readings at virtual times, the commands expected (kaiser test rules).
tests:
  - name: the fan runs while it is hot and stops when it has cooled
    rules: [fan-when-hot]
    steps:
      - {at: 0s, readings: {house.air_temp: 29}}
      - {at: 60s, readings: {house.air_temp: 25}}
    expect:
      - {at: 0s, command: {actuator: house.fan, set: on}}
      - {at: 60s, command: {actuator: house.fan, set: off}}
""",
}


def cmd_init(args: argparse.Namespace) -> int:
    """``kaiser init DIR``: write the files above; refuses to overwrite any."""
    root = Path(args.dir)
    taken = [name for name in FILES if (root / name).exists()]
    if taken:
        print(f"kaiser init: {root} already has {', '.join(taken)}; nothing written", file=sys.stderr)
        return 1
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote a deployment to {root}: one board, two rules, one test. Next:\n"
          f"  cd {root}\n"
          f"  kaiser lint rules --strict   # every static check\n"
          f"  kaiser test rules            # the rule test\n"
          f"  kaiser run                   # the server (Mosquitto on 127.0.0.1:1883), "
          f"status page http://127.0.0.1:8765/")
    return 0
