"""Decode + process throughput of sensor readings on one core.

    .venv/bin/python bench/bench_codec.py [--seconds 2] [--profile]

A realistic mix: current-firmware single readings (raw_mode, Unix seconds),
legacy single readings (raw_value, uptime ms, retained) and batches of five,
over three boards of the example device map. Measures readings/s through
``codec.decode`` + ``Router.route`` (which runs the sensor libraries), and the
same payloads through bare ``json.loads`` as a baseline measured in the same
run. Target: at least 50,000 readings/s.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import codec
from engine.codec import SensorData
from engine.model import Deployment, Device, Sensor
from engine.routing import Router

NOW = 1795000010.0
TARGET = 50_000


def deployment() -> Deployment:
    devs = {}
    for i, esp in enumerate(("ESP_4A1B2C", "ESP_7C3D9E", "ESP_A1B2C3D4")):
        name = f"house{i}"
        devs[name] = Device(name, esp, sensors=(
            Sensor(name, "air_temp", 4, "ds18b20"),
            Sensor(name, "climate", 21, "sht31", i2c_address=0x44, quantities=("temperature", "humidity")),
            Sensor(name, "weather", 21, "bmp280", i2c_address=0x76, quantities=("pressure", "temperature")),
            Sensor(name, "soil", 34, "moisture", calibration={"dry": 3200, "wet": 1300}),
            Sensor(name, "ph", 32, "ph", calibration={"slope": -3.6, "offset": 12.4}),
            Sensor(name, "ec", 33, "ec"),
            Sensor(name, "co2", 16, "co2"),
        ))
    return Deployment(devices=devs)


def traffic(n: int, seed: int = 1) -> list[tuple[str, bytes, bool, int]]:
    """(topic, payload, retained, readings in it) in a 45/35/20 mix of current,
    legacy and batch messages."""
    rnd = random.Random(seed)
    esps = ("ESP_4A1B2C", "ESP_7C3D9E", "ESP_A1B2C3D4")
    singles = [(4, "ds18b20", lambda: rnd.randint(200, 500)),
               (21, "sht31_temp", lambda: rnd.randint(20000, 30000)),
               (21, "sht31_humidity", lambda: rnd.randint(20000, 50000)),
               (34, "moisture", lambda: rnd.randint(1500, 3100)),
               (32, "ph", lambda: rnd.randint(1500, 2500)),
               (33, "ec", lambda: rnd.randint(100, 1000))]
    out: list[tuple[str, bytes, bool, int]] = []
    for i in range(n):
        esp = rnd.choice(esps)
        u = rnd.random()
        if u < 0.45:
            gpio, typ, raw = rnd.choice(singles)
            o = codec.encode_reading("god", esp, gpio, typ, raw=raw(), ts=1795000000 + i, seq=i)
        elif u < 0.80:
            gpio, typ, raw = rnd.choice(singles)
            o = codec.encode_reading("god", esp, gpio, typ, raw=raw(), ts=1834567 + i, generation="legacy",
                                     value=0.0, unit="", quality="good", zone_id="greenhouse_1")
        else:
            items = [{"gpio": g, "sensor_type": t, "raw": r(), "quality": "good"} for g, t, r in rnd.sample(singles, 4)]
            items.append({"gpio": 21, "sensor_type": "bmp280_pressure", "value": 1013.25, "raw_mode": False})
            o = codec.encode_device("god", esp, "sensor_batch", {"ts": 1795000000 + i, "esp_id": esp, "sensors": items})
            out.append((o.topic, o.payload, False, len(items)))
            continue
        out.append((o.topic, o.payload, o.retain, 1))
    return out


def measure(fns: dict[str, Callable[[], int]], seconds: float) -> dict[str, tuple[float, float]]:
    """Best readings/s of each function, by CPU time of this process and by wall
    clock, passes interleaved so machine load hits all of them alike."""
    best = {name: (0.0, 0.0) for name in fns}
    end = time.perf_counter() + seconds * len(fns)
    while time.perf_counter() < end:
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            n = fn()
            c1, w1 = time.process_time(), time.perf_counter()
            cpu, wall = best[name]
            best[name] = (max(cpu, n / max(c1 - c0, 1e-9)), max(wall, n / (w1 - w0)))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of decode+route")
    args = ap.parse_args(argv)

    msgs = traffic(args.messages)
    readings = sum(m[3] for m in msgs)
    router = Router(deployment())
    decode, route, loads = codec.decode, router.route, json.loads

    def baseline() -> int:
        for _t, p, _r, _n in msgs:
            loads(p)
        return readings

    def decode_only() -> int:
        for t, p, r, _n in msgs:
            decode(t, p, retained=r, received_at=NOW)
        return readings

    def full() -> int:
        n = 0
        for t, p, r, _n in msgs:
            m = decode(t, p, retained=r, received_at=NOW)
            if m.__class__ is SensorData:
                n += len(route(m).readings)
        return n

    assert full() == readings, "every reading of the mix must route"
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            full()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)

    r = measure({"base": baseline, "decode": decode_only, "full": full}, args.seconds)
    (base, base_w), (dec, dec_w), (tot, tot_w) = r["base"], r["decode"], r["full"]
    print(f"mix: {len(msgs)} messages, {readings} readings "
          f"({readings / len(msgs):.2f} per message; 45% current, 35% legacy, 20% batches of 5)")
    print("readings/s, best pass; CPU time of this process (wall clock in brackets)")
    print(f"json.loads baseline     {base:>10,.0f}  ({base_w:>10,.0f})")
    print(f"decode                  {dec:>10,.0f}  ({dec_w:>10,.0f})   {dec / base:.2f}x baseline")
    print(f"decode + route/process  {tot:>10,.0f}  ({tot_w:>10,.0f})   {tot / base:.2f}x baseline")
    print(f"target {TARGET:,} readings/s on one core: {'met' if tot >= TARGET else 'NOT met'}")
    return 0 if tot >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
