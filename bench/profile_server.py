#!/usr/bin/env python3
"""Kaiser's per-reading cost without a broker: ``Server.on_mqtt`` fed firmware payloads.

    .venv/bin/python bench/profile_server.py                  # us/reading, tick, next_due, snapshot
    .venv/bin/python bench/profile_server.py --profile 30     # plus a cProfile, top 30 by own time
    .venv/bin/python bench/profile_server.py --readings 50000 --boards 500

The deployment is bench_server.py's (``--boards`` boards, a DS18B20 and a relay
each, two rules per board: 1,000 rules over 500 boards). Readings are espfleet's
``cross`` pattern (26.5/23.5 alternating per sensor, every other reading an edge
that sends one command), in espfleet's payload format, handed to
``Server.on_mqtt`` exactly as the MQTT link does, with a real DuckDB store (its
writer thread running) and a publisher that only counts. Times are wall clock
per reading on a possibly busy machine: run it twice and take the lower.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import write_deployment  # noqa: E402

import engine.app as app  # noqa: E402
from engine.adapters.store import Store  # noqa: E402
from engine.config.settings import load_settings  # noqa: E402
from engine.pipeline import Kaiser  # noqa: E402


class CountingLink:
    """Stands in for MqttLink: counts what would be published."""

    def __init__(self) -> None:
        self.published = 0

    def publish(self, msg: object) -> None:
        self.published += 1


def payloads(boards: int, n: int, t0: float) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for s in range(n):
        b = s % boards + 1
        esp = f"ESP_{b:08X}"
        v = 26.5 if (s // boards) % 2 == 0 else 23.5
        topic = f"kaiser/god/esp/{esp}/sensor/34/data"
        payload = (f'{{"ts": {int(t0) + s // 1000}, "esp_id": "{esp}", "gpio": 34, "sensor_type": "DS18B20", '
                   f'"raw": {round(v * 100)}, "value": {v:.2f}, "unit": "C", "quality": "good", '
                   f'"raw_mode": false, "seq": {s}}}').encode()
        out.append((topic, payload))
    return out


def build(work: Path, boards: int) -> app.Server:
    toml = write_deployment(work, boards, "127.0.0.1", 1, 1)
    settings = load_settings(toml)
    server = app.Server(settings, websocket=False, watch=False, rules_dir=work / "rules")
    deployment, diags, version = app.load_rules(server.rules_dir, server.tz)
    errors = [d for d in app._errors(diags) if d.code != "K306"]
    if errors:
        sys.exit("bench deployment has errors: " + "; ".join(d.text() for d in errors))
    server.store = Store(str(work / "bench.duckdb"), 1.0, 0.0, now=server.clock.now)
    server.store.start()
    server._install(deployment, version)
    server.kaiser = Kaiser(deployment)
    server.mqtt = CountingLink()  # type: ignore[assignment]
    return server


def per_call(fn: object, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t) / reps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", type=int, default=500)
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile, print the top N functions")
    ap.add_argument("--no-gc-tuning", action="store_true", help="leave the collector as Python starts it")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kaiser-prof-") as tmp:
        server = build(Path(tmp), a.boards)
        now = server.clock.now()
        msgs = payloads(a.boards, a.readings + 2 * a.boards, now)
        warm, timed = msgs[:2 * a.boards], msgs[2 * a.boards:]
        for b in range(1, a.boards + 1):  # every board says hello: the relay devices are online
            esp = f"ESP_{b:08X}"
            body = {"esp_id": esp, "ts": int(now), "time_valid": True, "uptime": 100,
                    "heap_free": 180000, "wifi_rssi": -60}
            server.on_mqtt(f"kaiser/god/esp/{esp}/system/heartbeat", json.dumps(body).encode(), False)
        for topic, p in warm:
            server.on_mqtt(topic, p, False)
        if not a.no_gc_tuning:
            app._tune_gc()
        pub0 = server.mqtt.published  # type: ignore[union-attr]
        prof = cProfile.Profile() if a.profile else None
        gc_before = [s["collections"] for s in gc.get_stats()]
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        on_mqtt = server.on_mqtt
        for topic, p in timed:
            on_mqtt(topic, p, False)
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - t
        gcs = [s["collections"] - b for s, b in zip(gc.get_stats(), gc_before, strict=True)]
        sent = server.mqtt.published - pub0  # type: ignore[union-attr]
        k = server.kaiser
        print(f"{len(timed)} readings, {a.boards} boards, {len(k.deployment.rules)} rules: "
              f"{wall / len(timed) * 1e6:.1f} us/reading{' (under cProfile)' if prof else ''}, "
              f"{sent} commands, gc collections per generation {gcs}")
        now = server.clock.now()
        print(f"Kaiser.tick (nothing due): {per_call(lambda: k.tick(now), 200) * 1e6:.1f} us")
        print(f"Kaiser.next_due:           {per_call(k.next_due, 200) * 1e6:.1f} us")
        print(f"Kaiser.snapshot:           {per_call(k.snapshot, 20) * 1e3:.2f} ms")
        snap = k.snapshot()
        from engine.adapters.store import _dumps

        print(f"snapshot JSON:             {per_call(lambda: _dumps(snap), 20) * 1e3:.2f} ms")
        assert server.store is not None
        t = time.perf_counter()
        server.store.flush()
        print(f"store flush of the rest:   {(time.perf_counter() - t) * 1e3:.1f} ms")
        server.store.close()
        if prof is not None:
            s = io.StringIO()
            st = pstats.Stats(prof, stream=s)
            st.sort_stats("tottime").print_stats(a.profile)
            print(s.getvalue())
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(a.profile)
            print(s.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
