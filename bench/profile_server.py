#!/usr/bin/env python3
"""Kaiser's per-reading cost without a broker: ``Server.on_mqtt`` fed firmware payloads.

    .venv/bin/python bench/profile_server.py                  # us/reading, tick, next_due, snapshot
    .venv/bin/python bench/profile_server.py --profile 30     # plus a cProfile, top 30 by own time
    .venv/bin/python bench/profile_server.py --readings 50000 --boards 500
    .venv/bin/python bench/profile_server.py --paced 1000 --seconds 20  # latency tail under a timer loop
    .venv/bin/python bench/profile_server.py --batch 50      # Server.on_ingest: the reader process's batches

``--batch N``: the readings are decoded first (untimed, as the ingest reader
process does, engine/adapters/ingest.py) and handed to ``Server.on_ingest`` N at
a time: the server process's own cost per reading with ``KAISER_INGEST=process``.

``--paced R``: the readings arrive at R per second on the event loop, with the
server's own timer loop (ticks, state snapshots) and the store's writer thread
running: prints the reading-handling delay (finished minus due) p50/p99/max and
the garbage collections' pauses: where a latency tail on this side of the broker
comes from.

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
import asyncio
import cProfile
import gc
import io
import json
import os
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
from engine.adapters.ingest import item as ingest_item  # noqa: E402
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


def build(work: Path, boards: int, flush_interval: float = 1.0) -> app.Server:
    toml = write_deployment(work, boards, "127.0.0.1", 1, 1)
    settings = load_settings(toml)
    server = app.Server(settings, websocket=False, watch=False, rules_dir=work / "rules")
    deployment, diags, version = app.load_rules(server.rules_dir, server.tz)
    errors = [d for d in app._errors(diags) if d.code != "K306"]
    if errors:
        sys.exit("bench deployment has errors: " + "; ".join(d.text() for d in errors))
    server.store = Store(str(work / "bench.duckdb"), flush_interval, 0.0, now=server.clock.now)
    server.store.start()
    server.kaiser = Kaiser(deployment)  # before _install, as Server.start does (one version id)
    server._install(deployment, version)
    server.mqtt = CountingLink()  # type: ignore[assignment]
    return server


def rss_mb() -> float:
    """Resident set size of this process now (MB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def soak(server: app.Server, boards: int, n: int, batch: int, now: float, rss_built: float) -> None:
    """``n`` readings through ``Server.on_ingest``, made 10,000 at a time (the
    harness holds no more), the store flushing as it does; RSS as it goes."""
    done, step, t0 = 0, 10_000, time.perf_counter()
    report = max(step, n // 10)
    while done < n:
        k = min(step, n - done)
        msgs = payloads(boards, k, now + done / 1000)
        items = [ingest_item(t, p, False, now + done / 1000) for t, p in msgs]
        for b0 in range(0, k, batch):
            server.on_ingest(items[b0:b0 + batch])
        done += k
        if done % report == 0 or done == n:
            print(f"{done:>9} readings: RSS {rss_mb():.0f} MB ({rss_mb() - rss_built:+.0f} MB since built), "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    assert server.store is not None
    server.store.flush()
    gc.collect()
    print(f"after a flush and a full collection: RSS {rss_mb():.0f} MB ({rss_mb() - rss_built:+.0f} MB since built); "
          f"readings stored {server.store.query('SELECT count(*) FROM readings').rows[0][0]}")


def per_call(fn: object, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t) / reps


async def paced(server: app.Server, msgs: list[tuple[str, bytes]], rate: float) -> list[float]:
    """Hand ``msgs`` to on_mqtt at ``rate`` per second; returns each one's delay (s)."""
    timer = asyncio.get_running_loop().create_task(server._timer_loop())
    lags: list[float] = []
    clock = time.perf_counter
    t0 = clock() + 0.05
    i, n = 0, len(msgs)
    on_mqtt = server.on_mqtt
    while i < n:
        due = t0 + i / rate
        wait = due - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        now = clock()
        while i < n and t0 + i / rate <= now:  # what a socket read would hand over at once
            topic, p = msgs[i]
            on_mqtt(topic, p, False)
            lags.append(clock() - (t0 + i / rate))
            i += 1
        await asyncio.sleep(0)
    timer.cancel()
    return lags


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", type=int, default=500)
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile, print the top N functions")
    ap.add_argument("--paced", type=float, default=0.0, metavar="RATE",
                    help="feed readings at RATE/s on an event loop with the timer loop running")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of --paced")
    ap.add_argument("--batch", type=int, default=0, metavar="N",
                    help="decode first, then hand N readings at a time to Server.on_ingest")
    ap.add_argument("--soak", type=int, default=0, metavar="N",
                    help="memory: N readings (through on_ingest, --batch or 50 a batch), RSS every tenth")
    ap.add_argument("--no-flush", action="store_true",
                    help="the store's writer never flushes during the run (what its DuckDB writes cost the tail)")
    ap.add_argument("--no-gc-tuning", action="store_true", help="leave the collector as Python starts it")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kaiser-prof-") as tmp:
        rss0, t_build = rss_mb(), time.perf_counter()
        server = build(Path(tmp), a.boards, 1e9 if a.no_flush else 1.0)
        t_build = time.perf_counter() - t_build
        rss_built = rss_mb()
        print(f"{a.boards} boards, {2 * a.boards} rules: loaded, linted, compiled and the server built in "
              f"{t_build:.2f} s; RSS {rss0:.0f} -> {rss_built:.0f} MB "
              f"({(rss_built - rss0) * 1024 / max(1, 2 * a.boards):.1f} KB a rule)", flush=True)
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
        if a.soak:
            soak(server, a.boards, a.soak, a.batch or 50, now, rss_built)
            assert server.store is not None
            server.store.close()
            return 0
        if a.paced:
            pauses: list[float] = []
            started: list[float] = []

            def on_gc(phase: str, info: dict[str, int]) -> None:
                if phase == "start":
                    started.append(time.perf_counter())
                elif started:
                    pauses.append(time.perf_counter() - started.pop())

            gc.callbacks.append(on_gc)
            n = int(a.paced * a.seconds)
            c0 = time.thread_time()
            lags = asyncio.run(paced(server, payloads(a.boards, n, now + 10), a.paced))
            cpu = (time.thread_time() - c0) / n
            gc.callbacks.remove(on_gc)
            ms = [x * 1e3 for x in lags]
            sent = server.mqtt.published - pub0  # type: ignore[union-attr]
            print(f"paced {a.paced:g}/s for {a.seconds:g}s: handling delay p50 {pct(ms, 0.5):.3f} "
                  f"p90 {pct(ms, 0.9):.3f} p99 {pct(ms, 0.99):.3f} p99.9 {pct(ms, 0.999):.3f} "
                  f"max {max(ms):.1f} ms; {len(pauses)} gc pauses, max "
                  f"{max(pauses, default=0) * 1e3:.1f} ms; {sent} commands; "
                  f"event loop thread CPU {cpu * 1e6:.0f} us/reading")
            assert server.store is not None
            server.store.close()
            return 0
        prof = cProfile.Profile() if a.profile else None
        gc_before = [s["collections"] for s in gc.get_stats()]
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        on_mqtt = server.on_mqtt
        # five slices, each timed (wall and this thread's CPU): the best slice is the
        # least disturbed by a busy machine
        slices: list[tuple[float, float]] = []
        step = max(1, len(timed) // 5)
        items = [ingest_item(t, p, False, now) for t, p in timed] if a.batch else []
        for k0 in range(0, len(timed), step):
            part = timed[k0:k0 + step]
            w0, c0 = time.perf_counter(), time.thread_time()
            if a.batch:
                chunk = items[k0:k0 + step]
                for b0 in range(0, len(chunk), a.batch):
                    server.on_ingest(chunk[b0:b0 + a.batch])
            else:
                for topic, p in part:
                    on_mqtt(topic, p, False)
            slices.append(((time.perf_counter() - w0) / len(part), (time.thread_time() - c0) / len(part)))
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - t
        server.store.flush()  # type: ignore[union-attr]
        print(f"RSS after {len(timed)} readings (store flushed): {rss_mb():.0f} MB "
              f"({rss_mb() - rss_built:+.0f} MB since the server was built)")
        gcs = [s["collections"] - b for s, b in zip(gc.get_stats(), gc_before, strict=True)]
        sent = server.mqtt.published - pub0  # type: ignore[union-attr]
        k = server.kaiser
        print(f"{len(timed)} readings, {a.boards} boards, {len(k.deployment.rules)} rules: "
              f"{wall / len(timed) * 1e6:.1f} us/reading{' (under cProfile)' if prof else ''}"
              f"{f' through on_ingest, {a.batch} a batch' if a.batch else ''} "
              f"(best fifth: {min(w for w, _ in slices) * 1e6:.1f} us wall, "
              f"{min(c for _, c in slices) * 1e6:.1f} us CPU), "
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
