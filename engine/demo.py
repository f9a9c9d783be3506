"""``kaiser demo`` and ``kaiser simulate``: simulated El Trabajante boards.

``demo`` starts an in-process MQTT broker, the server with the example rules and
an in-memory store, one simulated board per device of the device map (heartbeats,
raw-mode readings following a time-lapse day, answers to every command with a
response and a status), and a live view. With ``--duration S`` it stops after S
seconds, prints a summary and exits 0. No Mosquitto needed.

``simulate --devices N --rate R`` runs N virtual boards against the configured
broker: the device map's boards first, then generic ones (a DS18B20 on GPIO 4 and
a relay on GPIO 5), R readings per second in total.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt

import sensors
from engine import codec
from engine.adapters.mqtt import parse_url
from engine.config.settings import Settings, StoreSettings, WebsocketSettings, load_settings
from engine.errors import ConfigError, KaiserError
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
# a simulated board


@dataclass
class SimBoard:
    """One ESP32 running El Trabajante (current firmware), simulated."""

    device: Device
    kaiser_id: str
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    actuators: dict[str, float] = field(default_factory=dict)  # actuator name -> duty
    latched: bool = False
    commands: int = 0
    readings: int = 0
    uptime_offset: float = 0.0

    def uptime(self) -> float:
        return time.monotonic() - self.started + self.uptime_offset

    def heartbeat(self, now: float) -> codec.Outgoing:
        return codec.encode_heartbeat(
            self.kaiser_id, self.device.esp_id, ts=now, uptime=self.uptime(),
            sensor_count=len(self.device.sensors), actuator_count=len(self.device.actuators),
            zone_id=self.device.zone or "",
        )

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

    def reading(self, sensor: Sensor, quantity: str | None, hour: float, now: float) -> codec.Outgoing:
        q = quantity or _default_quantity(sensor.type)
        value = physical(sensor, q, hour, self.actuators, self.rng)
        wire, raw, value = raw_reading(sensor, quantity, value)
        extra: dict[str, Any] = {"zone_id": self.device.zone or "", "subzone_id": sensor.subzone or ""}
        self.readings += 1
        body = codec.reading_body(self.device.esp_id, sensor.gpio, wire, ts=now, raw=raw,
                                  value=None if raw is not None else value, seq=self.readings, **extra)
        if raw is None:
            body["value"] = round(value, 3)
            body["raw_mode"] = False
        if sensor.i2c_address is not None:
            body["i2c_address"] = sensor.i2c_address
        if sensor.onewire_address:
            body["onewire_address"] = sensor.onewire_address
        return codec.encode_device(self.kaiser_id, self.device.esp_id, "sensor_data", body, gpio=sensor.gpio)

    def _actuator(self, gpio: int) -> Actuator | None:
        return next((a for a in self.device.actuators if a.gpio == gpio), None)

    def on_command(self, gpio: int, payload: dict[str, Any], now: float) -> list[codec.Outgoing]:
        """Answer a command as the firmware does: a response, then a status."""
        a = self._actuator(gpio)
        cmd = str(payload.get("command", "")).upper()
        value = float(payload.get("value", 0.0) or 0.0)
        duration = payload.get("duration", 0)
        self.commands += 1
        if a is None:
            return [self._response(gpio, cmd, value, duration, False, f"No actuator on GPIO {gpio}")]
        if self.latched and cmd != "OFF":
            return [self._response(gpio, cmd, value, duration, False, "Emergency stop active")]
        cur = self.actuators.get(a.name, 0.0)
        if cmd == "ON":
            new = 1.0
        elif cmd == "OFF":
            new = 0.0
        elif cmd == "TOGGLE":
            new = 0.0 if cur > 0 else 1.0
        elif cmd == "PWM":
            new = max(0.0, min(1.0, value))
        else:
            return [self._response(gpio, cmd, value, duration, False, f"Unknown command {cmd}")]
        self.actuators[a.name] = new
        return [self._response(gpio, cmd, value, duration, True, "Command executed"), self.status(a, now)]

    def status(self, a: Actuator, now: float) -> codec.Outgoing:
        v = self.actuators.get(a.name, 0.0)
        body = {"esp_id": self.device.esp_id, "zone_id": self.device.zone or "", "ts": int(now), "gpio": a.gpio,
                "type": a.type, "state": v > 0, "pwm": round(v * 255), "runtime_ms": 0,
                "emergency": "active" if self.latched else "normal"}
        return codec.encode_device(self.kaiser_id, self.device.esp_id, "actuator_status", body, gpio=a.gpio)

    def _response(self, gpio: int, cmd: str, value: float, duration: Any, ok: bool, message: str) -> codec.Outgoing:
        body = {"esp_id": self.device.esp_id, "ts": int(time.time()), "gpio": gpio, "command": cmd,
                "value": value, "duration": duration, "success": ok, "message": message}
        return codec.encode_device(self.kaiser_id, self.device.esp_id, "actuator_response", body, gpio=gpio)

    def emergency(self, now: float) -> list[codec.Outgoing]:
        self.latched = True
        out = []
        for a in self.device.actuators:
            self.actuators[a.name] = 0.0
            out.append(self.status(a, now))
        body = {"ts": int(now), "gpio": codec.BOARD_GPIO, "type": "emergency_stop", "message": "All actuators stopped"}
        out.append(codec.encode_device(self.kaiser_id, self.device.esp_id, "actuator_alert", body,
                                       gpio=codec.BOARD_GPIO))
        return out

    def on_config(self, payload: dict[str, Any]) -> list[codec.Outgoing]:
        self.latched = False  # a fresh actuator config clears the latch
        n = len(payload.get("actuators", []))
        body = {"status": "success", "type": "actuator", "count": n, "message": f"Configured {n} actuator(s)"}
        return [codec.encode_device(self.kaiser_id, self.device.esp_id, "config_response", body)]


def _default_quantity(sensor_type: str) -> str:
    try:
        lib, q = sensors.registry.resolve(sensor_type)
    except KaiserError:
        return "value"
    return q or lib.quantities[0].name


class Fleet:
    """Simulated boards on one MQTT connection. ``hours_per_second``: time-lapse of the
    simulated day the values follow (0 = real time of day)."""

    def __init__(self, boards: list[SimBoard], kaiser_id: str, url: str, *, rate: float,
                 heartbeat_every: float = 20.0, hours_per_second: float = 0.0, start_hour: float | None = None) -> None:
        self.boards = {b.device.esp_id: b for b in boards}
        self.kaiser_id = kaiser_id
        self.url = url
        self.rate = rate
        self.heartbeat_every = heartbeat_every
        self.hours_per_second = hours_per_second
        self.start_hour = start_hour
        self.t0 = time.monotonic()
        self.sent = 0
        self.client: aiomqtt.Client | None = None

    def hour(self) -> float:
        lt = time.localtime()
        real = lt.tm_hour + lt.tm_min / 60 + lt.tm_sec / 3600
        start = real if self.start_hour is None else self.start_hour
        if self.hours_per_second <= 0:
            return real
        return (start + (time.monotonic() - self.t0) * self.hours_per_second) % 24

    async def _publish(self, m: codec.Outgoing) -> None:
        if self.client is not None:
            await self.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            self.sent += 1

    async def run(self, stop: asyncio.Event) -> None:
        host, port = parse_url(self.url)
        async with aiomqtt.Client(host, port, identifier=f"kaiser-sim-{random.getrandbits(32):08x}") as c:
            self.client = c
            k = self.kaiser_id
            await c.subscribe([(f"kaiser/{k}/esp/+/actuator/+/command", 1), (f"kaiser/{k}/esp/+/config", 1),
                               (f"kaiser/{k}/esp/+/actuator/emergency", 1), ("kaiser/broadcast/emergency", 1)])
            listen = asyncio.create_task(self._listen(c))
            now = time.time()
            for b in self.boards.values():  # boards say hello before they send data
                await self._publish(b.heartbeat(now))
            tasks = [listen, asyncio.create_task(self._heartbeats(stop)), asyncio.create_task(self._readings(stop))]
            try:
                await stop.wait()
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                self.client = None

    async def _listen(self, c: aiomqtt.Client) -> None:
        async for m in c.messages:
            topic = m.topic.value
            try:
                payload = json.loads(m.payload) if isinstance(m.payload, bytes | str) else {}
            except ValueError:
                continue
            now = time.time()
            parts = topic.split("/")
            out: list[codec.Outgoing] = []
            if topic == "kaiser/broadcast/emergency":
                for b in self.boards.values():
                    out.extend(b.emergency(now))
            elif len(parts) >= 4 and parts[3] in self.boards:
                b = self.boards[parts[3]]
                if parts[4:] == ["config"]:
                    out = b.on_config(payload)
                elif parts[4:] == ["actuator", "emergency"]:
                    out = b.emergency(now)
                elif len(parts) == 7 and parts[4] == "actuator" and parts[6] == "command":
                    out = b.on_command(int(parts[5]), payload, now)
            for o in out:
                await self._publish(o)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.heartbeat_every)
            now = time.time()
            for b in self.boards.values():
                await self._publish(b.heartbeat(now))

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
            await self._publish(b.reading(s, q, self.hour(), time.time()))
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

    settings = replace(settings, store=StoreSettings(path=":memory:", flush_interval=0.5),
                       websocket=replace(settings.websocket) if settings.websocket else WebsocketSettings())
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
        rng = random.Random(42)
        boards = [SimBoard(d, settings.kaiser.id, rng) for d in server.deployment.devices.values()]
        n_slots = sum(len(b.slots()) for b in boards)
        fleet = Fleet(boards, settings.kaiser.id, broker.url, rate=max(5.0, n_slots / 1.0),
                      heartbeat_every=15.0, hours_per_second=0.75, start_hour=4.0)
        view = LiveView()
        _tap(server, view)
        stop = asyncio.Event()
        fleet_task = asyncio.create_task(fleet.run(stop))
        t0 = time.monotonic()
        hub_url = server.hub.url if server.hub else "(off)"
        if not interactive:
            print(f"kaiser demo: embedded broker {broker.url}, WebSocket {hub_url}, "
                  f"{len(boards)} simulated boards, {len(server.deployment.rules)} rules")
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
    return 0


def _tap(server: Any, view: LiveView) -> None:
    """Mirror what the server does into the live view."""

    def on_outputs(out: Any, now: float) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(now))
        for a in out.sent:
            c = a.command
            who = f"rule {c.rule}" if c.rule else c.source
            v = "on" if c.value >= 1 else ("off" if c.value <= 0 else f"{c.value:.0%}")
            view.recent.append(f"{stamp} [green]SENT[/green] {c.actuator} {v} ({who})")
        for b in out.blocked:
            who = f"rule {b.command.rule}" if b.command.rule else b.command.source
            view.recent.append(f"{stamp} [yellow]BLOCKED[/yellow] {b.command.actuator} {b.code} ({who})")
        for n in out.notifications:
            view.recent.append(f"{stamp} [cyan]NOTIFY[/cyan] {n.text}")

    def on_reading(r: Any) -> None:
        view.values[r.sensor] = (r.value, r.unit)

    server.output_taps.append(on_outputs)
    server.reading_taps.append(on_reading)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``kaiser simulate --devices N --rate R [--duration S]`` against the configured broker."""
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
    for i in range(len(devices), args.devices):
        esp = f"ESP_{0x51000000 + i:08X}"
        name = f"sim{i}"
        devices.append(Device(name, esp, sensors=(Sensor(name, "air_temp", 4, "ds18b20"),),
                              actuators=(Actuator(name, "fan", 5, "relay"),)))
    rng = random.Random(7)
    boards = [SimBoard(d, settings.kaiser.id, rng) for d in devices]
    fleet = Fleet(boards, settings.kaiser.id, settings.mqtt.url, rate=args.rate, heartbeat_every=60.0)

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
