"""``kaiser demo`` and ``kaiser simulate``: simulated El Trabajante boards.

Every simulated board is a firmware twin (``engine.firmware``): it does with each
server message what the real board of its generation does (registration gate,
config contract, command scanner, emergency contracts ...), on its own MQTT
session. This module adds the greenhouse: what the sensors measure over a
time-lapse day, and which actuators change it. Boards start provisioned (their
device-map config in NVS, as installed boards are): a legacy board keeps only its
sensors, a current board both halves; the server's own pushes come on top.

``demo`` starts an in-process MQTT broker, the server with the example rules and
a store of its own (:func:`demo_dir`, replaced at each start, kept afterwards so
``kaiser why`` and ``kaiser history`` can look at what happened), one twin per
device of the device map (both generations: see :func:`firmware_for`) and a live
view on a terminal, a line per command, block and notification elsewhere. With
``--duration S`` it stops after S seconds, prints a summary and what to try next,
and exits 0. No Mosquitto needed.

``simulate --devices N --rate R [--firmware legacy|current|mixed]`` runs N twins
against the configured broker: the device map's boards first, then generic ones
(a DS18B20 on GPIO 4, a moisture probe on GPIO 32 and a relay on GPIO 5), R
readings per second in total (a twin publishes only what its firmware would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiomqtt

import sensors
from engine import codec
from engine.config.settings import Settings, StoreSettings, WebsocketSettings, load_settings
from engine.errors import ConfigError, KaiserError
from engine.firmware import GENERATIONS, Board, new_board
from engine.firmware.mqtt import TwinFleet
from engine.model import Actuator, Device, Sensor

log = logging.getLogger("kaiser.demo")

DAY = 86400.0


# --------------------------------------------------------------------------
# what a sensor measures over a (time-lapse) day


def _wave(hour: float, peak_hour: float) -> float:
    """-1..1, maximal at ``peak_hour``."""
    return math.cos(2 * math.pi * (hour - peak_hour) / 24.0)


def physical(sensor: Sensor, quantity: str, hour: float, actuators: dict[str, float], rng: random.Random) -> float:
    """A plausible value of ``quantity`` at local ``hour`` (0-24) in a greenhouse."""
    name = sensor.name.lower()
    noise = rng.gauss(0.0, 1.0)
    if quantity == "temperature":
        if "water" in name:
            return 18.0 + 1.5 * _wave(hour, 16) + 0.05 * noise
        if "soil" in name:
            return 17.0 + 2.0 * _wave(hour, 17) + 0.05 * noise
        return 20.0 + 10.0 * _wave(hour, 15) + 0.2 * noise  # 10 degC at 3:00, 30 degC at 15:00
    if quantity == "humidity":
        return max(20.0, min(99.0, 70.0 - 20.0 * _wave(hour, 15) + 1.0 * noise))
    if quantity == "moisture":
        watered = any(v > 0 for k, v in actuators.items() if "drip" in k)
        base = 42.0 + 14.0 * _wave(hour, 6)
        return max(5.0, min(95.0, base + (10.0 if watered else 0.0) + 0.5 * noise))
    if quantity == "co2":
        return max(300.0, 520.0 + 180.0 * _wave(hour, 3) + 5.0 * noise)
    if quantity == "light":
        return max(0.0, 55_000.0 * _wave(hour, 13) + 200.0 * noise)
    if quantity == "pressure":
        return 1013.0 + 4.0 * _wave(hour, 10) + 0.2 * noise
    if quantity == "ph":
        return 6.0 + 0.35 * _wave(hour, 14) + 0.02 * noise
    if quantity == "ec":
        return 1850.0 + 350.0 * _wave(hour, 12) + 10.0 * noise
    if quantity == "flow":
        pumping = any(v > 0 for k, v in actuators.items() if "pump" in k and "dose" not in k)
        return max(0.0, 6.5 + 0.3 * noise) if pumping else 0.0
    return 50.0 + 10.0 * _wave(hour, 12) + noise


# --------------------------------------------------------------------------
# value -> raw as the firmware would send it

_WIRE_TYPE = {
    ("sht31", "temperature"): "sht31_temp",
    ("sht31", "humidity"): "sht31_humidity",
    ("bmp280", "pressure"): "bmp280_pressure",
    ("bmp280", "temperature"): "bmp280_temp",
}


def _invert(sensor_type: str, target: float, calibration: dict[str, float], quantity: str | None,
            lo: float = 0.0, hi: float = 4095.0) -> float | None:
    """The ADC count that the sensor library turns into ``target`` (bisection)."""
    def f(raw: float) -> float:
        return float(sensors.process(sensor_type, raw, calibration, quantity=quantity).value)

    a, b = lo, hi
    fa, fb = f(a), f(b)
    if not min(fa, fb) <= target <= max(fa, fb):
        return None
    rising = fb > fa
    for _ in range(40):
        m = (a + b) / 2
        if (f(m) < target) == rising:
            a = m
        else:
            b = m
    return float(round((a + b) / 2))


def raw_reading(sensor: Sensor, quantity: str | None, value: float) -> tuple[str, float | None, float]:
    """(wire sensor_type, raw or None for a processed-only value, value)."""
    t = sensor.type.lower()
    cal = dict(sensor.calibration)
    if t == "ds18b20":
        return "ds18b20", float(round(value * 16)), value
    if t == "sht31" or t.startswith("sht31"):
        q = quantity or ("humidity" if "hum" in t else "temperature")
        if q == "humidity":
            return "sht31_humidity", float(round(value / 100.0 * 65535)), value
        return "sht31_temp", float(round((value + 45.0) / 175.0 * 65535)), value
    if t.startswith("bmp280"):
        q = quantity or ("pressure" if "press" in t else "temperature")
        return _WIRE_TYPE[("bmp280", q)], round(value, 2), value
    if t in ("co2", "light"):
        return t, float(round(value)), value
    if t == "flow":
        return "flow", float(round(value * cal.get("pulses_per_litre", 450.0))), value
    raw = _invert(t, value, cal, quantity)
    return t, raw, value


# --------------------------------------------------------------------------
# a simulated board: the firmware twin plus a greenhouse around it


def firmware_for(devices: list[Device], choice: str = "mixed") -> dict[str, str]:
    """esp id -> firmware generation. A device map entry that names ``legacy`` or
    ``current`` keeps it; ``auto`` (the default) follows ``choice``: ``legacy``,
    ``current``, or ``mixed`` (alternating current, legacy, current, ... so a map of
    two boards or more runs both generations)."""
    out: dict[str, str] = {}
    i = 0
    for d in devices:
        fw = getattr(d, "firmware", "auto")
        if fw in GENERATIONS:
            out[d.esp_id] = fw
            continue
        out[d.esp_id] = choice if choice in GENERATIONS else ("current", "legacy")[i % 2]
        i += 1
    return out


def provisioning_config(device: Device, generation: str) -> bytes:
    """The config push a board got when it was installed (so a simulated board starts
    with its sensors and actuators in NVS, as boards in the field do)."""
    sensors: list[dict[str, Any]] = []
    for s in device.sensors:
        item: dict[str, Any] = {"gpio": s.gpio, "sensor_type": s.type.lower(), "sensor_name": s.name,
                                "active": True, "raw_mode": True}
        if s.i2c_address is not None:
            item["i2c_address"] = s.i2c_address
        if s.onewire_address:
            item["onewire_address"] = s.onewire_address
        sensors.append(item)
    actuators: list[dict[str, Any]] = []
    for a in device.actuators:
        item = {"gpio": a.gpio, "actuator_type": a.type, "actuator_name": a.name, "active": True,
                "default_state": bool(a.default_state)}
        if a.aux_gpio is not None:
            item["aux_gpio"] = a.aux_gpio
        actuators.append(item)
    body: dict[str, Any] = {"sensors": sensors, "actuators": actuators}
    if generation == "current":
        body = {"correlation_id": f"install-{device.esp_id}", **body}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class SimBoard:
    """One ESP32 running El Trabajante: the firmware twin (``twin``) decides what the
    board does with every message; this class adds what its sensors measure."""

    device: Device
    twin: Board
    rng: random.Random
    commands: int = 0
    readings: int = 0

    @property
    def generation(self) -> str:
        return self.twin.generation

    @property
    def latched(self) -> bool:
        return self.twin.latched

    @property
    def actuators(self) -> dict[str, float]:
        """actuator name -> duty 0.0-1.0 as the board drives it."""
        by_gpio = self.twin.actuators
        out: dict[str, float] = {}
        for a in self.device.actuators:
            item = by_gpio.get(a.gpio)
            out[a.name] = item.value if item is not None else 0.0
        return out

    def slots(self) -> list[tuple[Sensor, str | None]]:
        out: list[tuple[Sensor, str | None]] = []
        for s in self.device.sensors:
            if s.quantities:
                out.extend((s, q) for q in s.quantities)
            else:
                try:
                    _, q = sensors.registry.resolve(s.type)
                except KaiserError:
                    q = None
                out.append((s, q))
        return out

    def reading(self, sensor: Sensor, quantity: str | None, hour: float, now: float) -> list[codec.Outgoing]:
        """What the board publishes for one measurement ([] while its firmware may not)."""
        q = quantity or _default_quantity(sensor.type)
        value = physical(sensor, q, hour, self.actuators, self.rng)
        wire, raw, value = raw_reading(sensor, quantity, value)
        out = self.twin.reading(sensor.gpio, now, raw=raw if raw is not None else round(value),
                                value=value, sensor_type=wire, onewire_address=sensor.onewire_address,
                                i2c_address=sensor.i2c_address)
        self.readings += len(out)
        return out


def simulated_devices(numbers: Iterable[int]) -> list[Device]:
    """Generic boards for ``kaiser simulate`` beyond the device map: a DS18B20, a
    moisture probe and a fan relay on pins both firmware generations take (legacy
    keeps GPIO 4 for its OneWire bus and cannot read 34-39)."""
    out = []
    for i in numbers:
        esp = f"ESP_{0x51000000 + i:08X}"
        name = f"sim{i}"
        rom = f"28FF{0x51000000 + i:08X}0C79"
        out.append(Device(name, esp, sensors=(Sensor(name, "air_temp", 14, "ds18b20", onewire_address=rom),
                                              Sensor(name, "soil", 32, "moisture")),
                          actuators=(Actuator(name, "fan", 5, "relay"),)))
    return out


def make_boards(devices: list[Device], kaiser_id: str, rng: random.Random, now: float,
                choice: str = "mixed") -> list[SimBoard]:
    """A provisioned twin per device, generation by :func:`firmware_for`."""
    gens = firmware_for(devices, choice)
    boards = []
    for d in devices:
        kind = d.board if d.board in ("esp32dev", "xiao_esp32c3") else "esp32dev"
        twin = new_board(gens[d.esp_id], d.esp_id, kaiser_id=kaiser_id, board_kind=kind, now=now)
        twin.provision(provisioning_config(d, twin.generation), now)
        boards.append(SimBoard(d, twin, rng))
    return boards


def _default_quantity(sensor_type: str) -> str:
    try:
        lib, q = sensors.registry.resolve(sensor_type)
    except KaiserError:
        return "value"
    return q or lib.quantities[0].name


class Fleet:
    """Simulated boards, each on its own MQTT session (:class:`TwinFleet`), and the
    readings they take. ``hours_per_second``: time-lapse of the simulated day the
    values follow (0 = real time of day)."""

    def __init__(self, boards: list[SimBoard], kaiser_id: str, url: str, *, rate: float,
                 hours_per_second: float = 0.0, start_hour: float | None = None) -> None:
        self.boards = {b.device.esp_id: b for b in boards}
        self.kaiser_id = kaiser_id
        self.url = url
        self.rate = rate
        self.hours_per_second = hours_per_second
        self.start_hour = start_hour
        self.t0 = time.monotonic()
        self.twins = TwinFleet([b.twin for b in boards], url)
        self.twins.taps.append(self._count)

    @property
    def sent(self) -> int:
        return self.twins.sent

    def _count(self, twin: Board, m: codec.Outgoing) -> None:
        if m.topic.endswith("/response") and "/actuator/" in m.topic:
            self.boards[twin.esp_id].commands += 1

    def hour(self) -> float:
        lt = time.localtime()
        real = lt.tm_hour + lt.tm_min / 60 + lt.tm_sec / 3600
        start = real if self.start_hour is None else self.start_hour
        if self.hours_per_second <= 0:
            return real
        return (start + (time.monotonic() - self.t0) * self.hours_per_second) % 24

    async def run(self, stop: asyncio.Event) -> None:
        inner = asyncio.Event()
        twins = asyncio.create_task(self.twins.run(inner))
        readings = asyncio.create_task(self._readings(stop))
        try:
            done, _ = await asyncio.wait({twins, asyncio.create_task(stop.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if twins in done:
                twins.result()
        finally:
            readings.cancel()
            inner.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await readings
            with contextlib.suppress(asyncio.CancelledError):
                await twins

    async def _readings(self, stop: asyncio.Event) -> None:
        slots = [(b, s, q) for b in self.boards.values() for s, q in b.slots()]
        if not slots or self.rate <= 0:
            return
        interval = 1.0 / self.rate
        nxt = time.monotonic()
        i = 0
        while not stop.is_set():
            b, s, q = slots[i % len(slots)]
            i += 1
            await self.twins.emit(b.twin, b.reading(s, q, self.hour(), time.time()))
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif i % 100 == 0:
                await asyncio.sleep(0)


# --------------------------------------------------------------------------
# the demo


def _load_settings(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None)
    if path and (Path(path).exists() or path != "kaiser.toml"):
        return load_settings(path)
    return load_settings(None)


def _rules_dir(args: argparse.Namespace, settings: Settings) -> Path | None:
    candidates = []
    if getattr(args, "rules", None):
        candidates.append(Path(args.rules))
    candidates.append(Path(settings.kaiser.rules))
    candidates.append(Path(__file__).resolve().parents[1] / "rules")  # a source checkout
    for c in candidates:
        if c.exists():
            return c
    return None


class LiveView:
    """What the demo shows: latest values, actuator states, recent commands and events."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[float, str]] = {}
        self.recent: deque[str] = deque(maxlen=12)

    def render(self, server: Any, fleet: Fleet, elapsed: float, height: int = 40) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        m = server.metrics
        head = (f"[b]kaiser demo[/b]  {elapsed:5.1f} s  simulated time {int(fleet.hour()):02d}:"
                f"{int(fleet.hour() % 1 * 60):02d}   readings {m.readings}  commands {m.commands_sent}  "
                f"blocked {m.commands_blocked}  rule runs {m.rule_runs}")
        vals = Table(title="sensors", show_edge=False, pad_edge=False)
        vals.add_column("sensor")
        vals.add_column("value", justify="right")
        rows = max(4, height - 12 - min(6, len(self.recent)))
        refs = sorted(self.values)
        for ref in refs[:rows]:
            v, unit = self.values[ref]
            vals.add_row(ref, f"{v:.1f} {unit}")
        acts = Table(title="actuators (as the boards report)", show_edge=False, pad_edge=False)
        acts.add_column("actuator")
        acts.add_column("state", justify="right")
        pairs = [(b, a) for b in fleet.boards.values() for a in b.device.actuators]
        for b, a in pairs[:rows]:
            v = b.actuators.get(a.name, 0.0)
            state = "[green]on[/green]" if v >= 1 else ("off" if v <= 0 else f"{v:.0%}")
            acts.add_row(f"{b.device.name}.{a.name}", state + (" [red]E-STOP[/red]" if b.latched else ""))
        if len(refs) > rows:
            vals.add_row(f"(+{len(refs) - rows} more)", "")
        grid = Table.grid(padding=(0, 4))
        grid.add_row(vals, acts)
        recent = list(self.recent)[-min(6, max(1, height - rows - 8)):]
        return Group(Panel(head), grid, Panel("\n".join(recent) or "(waiting for the first rule)",
                                              title="commands, blocks and events"))


def demo_dir() -> Path:
    """Where the demo keeps its store and a kaiser.toml naming it: ``$KAISER_DEMO_DIR``,
    else ``$XDG_STATE_HOME/kaiser/demo`` (``~/.local/state/kaiser/demo``)."""
    env = os.environ.get("KAISER_DEMO_DIR")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "kaiser" / "demo"


def _prepare_store(settings: Settings, rules: Path) -> tuple[Path | None, str]:
    """A fresh store file for this demo and a kaiser.toml beside it that the CLI can
    be pointed at (``-c``) -> (that toml, the store path); in memory when the folder
    cannot be written."""
    d = demo_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        for name in ("kaiser.duckdb", "kaiser.duckdb.wal"):
            (d / name).unlink(missing_ok=True)
        toml = d / "kaiser.toml"
        _write_toml(toml, settings, rules, settings.websocket.port)
        return toml, str(d / "kaiser.duckdb")
    except OSError as exc:
        log.warning("demo store in memory: cannot write %s: %s", d, exc)
        return None, ":memory:"


def _write_toml(toml: Path, settings: Settings, rules: Path, port: int) -> None:
    """The demo's kaiser.toml: its store, and its WebSocket port (while the demo runs
    the CLI asks it; afterwards nothing answers there and the CLI reads the file)."""
    toml.write_text(
        "# written by `kaiser demo`: its store, for kaiser why / history / query after it ran\n"
        f"[kaiser]\nid = {json.dumps(settings.kaiser.id)}\nrules = {json.dumps(str(rules.resolve()))}\n"
        f"tz = {json.dumps(settings.kaiser.tz)}\n[mqtt]\nurl = \"embedded\"\n"
        f"[store]\npath = \"kaiser.duckdb\"\n[websocket]\nlisten = \"127.0.0.1:{port}\"\n", encoding="utf-8")


def cmd_demo(args: argparse.Namespace) -> int:
    """``kaiser demo [--duration S]``."""
    try:
        settings = _load_settings(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    rules = _rules_dir(args, settings)
    if rules is None:
        print("kaiser demo: no rules directory found (give --rules DIR)", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_demo(settings, rules, args.duration))
    except KeyboardInterrupt:
        return 0


async def _demo(settings: Settings, rules: Path, duration: float | None) -> int:
    from engine.adapters.broker import EmbeddedBroker
    from engine.app import Server

    toml, store_path = _prepare_store(settings, rules)
    # the embedded broker speaks MQTT 3.1.1 only: aiomqtt at once, not after an MQTT 5
    # CONNECT it refuses (3 s and two warnings at every start)
    settings = replace(settings, store=StoreSettings(path=store_path, flush_interval=0.5),
                       websocket=replace(settings.websocket) if settings.websocket else WebsocketSettings(),
                       mqtt=replace(settings.mqtt, client="aiomqtt"))
    interactive = sys.stdout.isatty()
    async with EmbeddedBroker() as broker:
        server = Server(settings, mqtt_url=broker.url, rules_dir=rules, watch=False,
                        ws_listen=settings.websocket.listen)
        try:
            await server.start()
        except OSError:  # the WebSocket port is taken (a real server runs): any free port
            await server.stop()
            server = Server(settings, mqtt_url=broker.url, rules_dir=rules, watch=False, ws_listen="127.0.0.1:0")
            await server.start()
        except ConfigError as exc:
            from engine.diagnostics import render

            print(render(exc.diagnostics) or str(exc), file=sys.stderr)
            await server.stop()
            return 1
        assert server.deployment is not None
        if toml is not None and server.hub is not None and server.hub.port != settings.websocket.port:
            with contextlib.suppress(OSError):
                _write_toml(toml, settings, rules, server.hub.port)
        rng = random.Random(42)
        boards = make_boards(list(server.deployment.devices.values()), settings.kaiser.id, rng, time.time())
        n_slots = sum(len(b.slots()) for b in boards)
        fleet = Fleet(boards, settings.kaiser.id, broker.url, rate=max(5.0, n_slots / 1.0),
                      hours_per_second=0.75, start_hour=4.0)
        view = LiveView()
        _tap(server, view, echo=not interactive)
        stop = asyncio.Event()
        fleet_task = asyncio.create_task(fleet.run(stop))
        t0 = time.monotonic()
        hub_url = server.hub.url if server.hub else "(off)"
        page = f"http://{server.hub.host}:{server.hub.port}/" if server.hub else None
        if not interactive:
            gens = ", ".join(f"{b.device.name} {b.generation}" for b in boards)
            print(f"kaiser demo: embedded broker {broker.url}, WebSocket {hub_url}, "
                  f"{len(boards)} simulated boards ({gens}), {len(server.deployment.rules)} rules", flush=True)
            if page:
                print(f"kaiser demo: status page {page} (while the demo runs)", flush=True)
        try:
            if interactive:
                from rich.live import Live

                with Live(view.render(server, fleet, 0), refresh_per_second=4, screen=False) as live:
                    while duration is None or time.monotonic() - t0 < duration:
                        await asyncio.sleep(0.25)
                        live.update(view.render(server, fleet, time.monotonic() - t0, live.console.height))
            else:
                while duration is None or time.monotonic() - t0 < duration:
                    await asyncio.sleep(min(1.0, max(0.05, (duration or 1e9) - (time.monotonic() - t0))))
        except asyncio.CancelledError:
            pass
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fleet_task, 5)
            m = server.metrics
            busiest = _busiest(server)
            summary = {"seconds": round(time.monotonic() - t0, 1), "boards": len(boards),
                       "readings": m.readings, "commands": m.commands_sent, "blocked": m.commands_blocked,
                       "rule_runs": m.rule_runs, "events": m.events, "malformed": m.malformed}
            await server.stop()
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"kaiser demo summary: {summary['readings']} readings, {summary['commands']} commands sent, "
                  f"{summary['blocked']} blocked, {summary['rule_runs']} rule runs, {summary['events']} events "
                  f"from {summary['boards']} boards in {summary['seconds']} s")
    for line in list(view.recent)[-10:]:
        console.print("  " + line)
    for b in boards:
        refused = _board_refusals(b)
        if refused:
            console.print(f"  {b.device.name} ({b.generation} firmware) refused: {refused}")
    for line in next_steps(toml, busiest, page, rules, duration is not None):
        console.print(line)
    return 0


def _busiest(server: Any) -> str | None:
    """The actuator with the most commands sent (what ``kaiser why`` has most to say about)."""
    counts: dict[str, int] = {}
    for (actuator, outcome, _), n in server.telemetry.commands.items():
        counts[actuator] = counts.get(actuator, 0) + n * (2 if outcome == "sent" else 1)
    return max(counts, key=lambda a: counts[a]) if counts else None


def next_steps(toml: Path | None, actuator: str | None, page: str | None, rules: Path, stopped: bool) -> list[str]:
    """What a newcomer can try after the demo, as command lines."""
    c = f" -c {toml}" if toml is not None else ""
    out = ["", "what to try next:"]
    if toml is not None:
        out.append(f"  kaiser why {actuator or 'north.fan'}{c}    # why it switched: rule, trigger, guard, firmware")
        out.append(f"  kaiser history north.air_temp{c} --since 1h")
        out.append(f"  kaiser query{c} 'SELECT code, count(*) FROM commands GROUP BY code'")
    if page:
        out.append(f"  kaiser demo, then open {page}    # the status page (boards, sensors, actuators, "
                   "events, emergency stop)" if stopped else f"  open {page}    # the status page")
    out.append(f"  kaiser lint {rules} --strict    # every check CI runs on the YAML; kaiser test {rules} runs its tests")
    out.append("  kaiser init my-greenhouse    # a small deployment of your own to start from")
    return out


def _board_refusals(b: SimBoard, limit: int = 4) -> str:
    """What a twin refused (config items its firmware cannot take, ...), deduplicated."""
    seen: list[str] = []
    for what, why in b.twin.refusals:
        line = f"{what} {why}"
        if line not in seen:
            seen.append(line)
    more = f" (+{len(seen) - limit} more)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + more


def _tap(server: Any, view: LiveView, echo: bool = False) -> None:
    """Mirror what the server does into the live view; ``echo``: also print a plain
    line per command, block and notification as it happens (no terminal)."""

    def note(line: str, plain: str) -> None:
        view.recent.append(line)
        if echo:
            print(plain, flush=True)

    def on_outputs(out: Any, now: float) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        for a in out.sent:
            c = a.command
            who = f"rule {c.rule}" if c.rule else c.source
            v = "on" if c.value >= 1 else ("off" if c.value <= 0 else f"{c.value:.0%}")
            note(f"{stamp} [green]SENT[/green] {c.actuator} {v} ({who})", f"{stamp} SENT {c.actuator} {v} ({who})")
        for b in out.blocked:
            who = f"rule {b.command.rule}" if b.command.rule else b.command.source
            note(f"{stamp} [yellow]BLOCKED[/yellow] {b.command.actuator} {b.code} ({who})",
                 f"{stamp} BLOCKED {b.command.actuator} {b.code} ({who}): {b.reason}")
        for n in out.notifications:
            note(f"{stamp} [cyan]NOTIFY[/cyan] {n.text}", f"{stamp} NOTIFY [{n.level}] {n.text}")

    def on_reading(r: Any) -> None:
        view.values[r.sensor] = (r.value, r.unit)

    server.output_taps.append(on_outputs)
    server.reading_taps.append(on_reading)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``kaiser simulate --devices N --rate R [--duration S] [--firmware legacy|current|mixed]``
    against the configured broker."""
    try:
        settings = _load_settings(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if settings.mqtt.embedded:
        print("kaiser simulate: mqtt.url is 'embedded'; give a broker URL in kaiser.toml", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    devices: list[Device] = []
    rules = _rules_dir(args, settings)
    if rules is not None:
        from engine.config import load_deployment

        deployment, _ = load_deployment(rules, settings.kaiser.tz)
        devices = list(deployment.devices.values())[: args.devices]
    devices.extend(simulated_devices(range(len(devices), args.devices)))
    rng = random.Random(7)
    boards = make_boards(devices, settings.kaiser.id, rng, time.time(), getattr(args, "firmware", "mixed"))
    fleet = Fleet(boards, settings.kaiser.id, settings.mqtt.url, rate=args.rate)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(fleet.run(stop))
        t0 = time.monotonic()
        try:
            while args.duration is None or time.monotonic() - t0 < args.duration:
                await asyncio.sleep(1.0)
                if task.done():
                    break
                print(f"{time.monotonic() - t0:6.0f} s  {fleet.sent} messages sent, "
                      f"{sum(b.commands for b in boards)} commands answered", flush=True)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except aiomqtt.MqttError as exc:
        print(f"kaiser simulate: broker {settings.mqtt.url}: {exc}", file=sys.stderr)
        return 1
    return 0
