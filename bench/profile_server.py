#!/usr/bin/env python3
"""Kaiser's per-reading cost without a broker: ``Server.on_mqtt`` fed firmware payloads.

    .venv/bin/python bench/profile_server.py                  # us/reading, tick, next_due, snapshot
    .venv/bin/python bench/profile_server.py --profile 30     # plus a cProfile, top 30 by own time
    .venv/bin/python bench/profile_server.py --readings 50000 --boards 500
    .venv/bin/python bench/profile_server.py --paced 1000 --seconds 20  # latency tail under a timer loop
    .venv/bin/python bench/profile_server.py --batch 50      # Server.on_ingest: the reader process's batches
    .venv/bin/python bench/profile_server.py --batch 50 --decode  # the MQTT 5 link: decode + on_ingest
    .venv/bin/python bench/profile_server.py --soak 1000000 --detail  # RSS over a million readings, and where
    .venv/bin/python bench/profile_server.py --soak 1000000 --writer process  # the same, the store in its own process (both counted)

``--batch N``: the readings are decoded first (untimed, as the ingest reader
process does, engine/adapters/ingest.py) and handed to ``Server.on_ingest`` N at
a time: the server process's own cost per reading with ``KAISER_INGEST=process``.
With ``--decode`` the decoding is timed too (``ingest.item`` per message, then
``on_ingest`` per batch): the event loop's cost per reading with the MQTT 5 link
(engine/adapters/mqtt5link.py), the default.

``--soak N``: memory over N readings (``--soak 1000000``: issue 13's "RSS after
1,000,000 readings through 1,000 rules"), ``--rate`` a second (5,000: more than
the server sustains through a broker here, less than it handles in-process, so
the store's writer keeps up; ``--rate 0`` feeds flat out, the event loop never
idles, the writer thread gets the GIL too rarely and rows wait in memory, a
backlog rather than growth), on an event loop with the server's timer loop
running (ticks, state snapshots). The baseline is RSS once the server
is built and warm: after the first ``--warm`` readings (50,000), the store
flushed and a full collection made; growth is measured from there, RSS every
tenth of the run and at the end. ``--detail`` says where the memory is at every report
(DuckDB's accounting, its jemalloc, pyarrow's pool, glibc's heap, Python's
objects); ``--trace K`` runs tracemalloc from the baseline on and prints the K
lines whose Python allocations grew most (slow); ``--memory-limit`` overrides
``[store] memory_limit``.

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
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import write_deployment  # noqa: E402

import engine.app as app  # noqa: E402
from engine.adapters.ingest import item as ingest_item  # noqa: E402
from engine.adapters.store import Store  # noqa: E402
from engine.adapters.storeproc import StoreClient  # noqa: E402
from engine.config.settings import load_settings, parse_size  # noqa: E402
from engine.pipeline import Kaiser  # noqa: E402


class CountingLink:
    """Stands in for MqttLink: counts what would be published."""

    def __init__(self) -> None:
        self.published = 0

    def publish(self, msg: object) -> None:
        self.published += 1


#: the high value of each pattern: ``cross`` (espfleet's: 26.5/23.5 around the
#: rules' 25, every other reading an edge and a command) and ``quiet`` (24.5/23.5:
#: the facts change, no rule fires, no command; the difference is what commands cost)
HIGH = {"cross": 26.5, "quiet": 24.5}


def payloads(boards: int, n: int, t0: float, pattern: str = "cross") -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    high = HIGH[pattern]
    for s in range(n):
        b = s % boards + 1
        esp = f"ESP_{b:08X}"
        v = high if (s // boards) % 2 == 0 else 23.5
        topic = f"kaiser/god/esp/{esp}/sensor/34/data"
        payload = (f'{{"ts": {int(t0) + s // 1000}, "esp_id": "{esp}", "gpio": 34, "sensor_type": "DS18B20", '
                   f'"raw": {round(v * 100)}, "value": {v:.2f}, "unit": "C", "quality": "good", '
                   f'"raw_mode": false, "seq": {s}}}').encode()
        out.append((topic, payload))
    return out


def build(work: Path, boards: int, flush_interval: float = 1.0, memory_limit: int | None = None,
          writer: str = "thread") -> app.Server:
    toml = write_deployment(work, boards, "127.0.0.1", 1, 1)
    settings = load_settings(toml)
    if memory_limit is not None:
        settings = replace(settings, store=replace(settings.store, memory_limit=memory_limit))
    server = app.Server(settings, websocket=False, watch=False, rules_dir=work / "rules")
    deployment, diags, version = app.load_rules(server.rules_dir, server.tz)
    errors = [d for d in app._errors(diags) if d.code != "K306"]
    if errors:
        sys.exit("bench deployment has errors: " + "; ".join(d.text() for d in errors))
    store_class = StoreClient if writer == "process" else Store
    server.store = store_class(str(work / "bench.duckdb"), flush_interval, 0.0, now=server.clock.now,
                               memory_limit=settings.store.memory_limit)  # as Server.start opens it
    server.store.start()
    server.kaiser = Kaiser(deployment)  # before _install, as Server.start does (one version id)
    server._install(deployment, version)
    server.mqtt = CountingLink()  # type: ignore[assignment]
    return server


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of this process (or ``pid``) now (MB)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _mallinfo() -> tuple[float, float, float] | None:
    """glibc's heap (MB): in use, free but kept (arenas), mmapped blocks; None off glibc."""
    try:
        import ctypes

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return None
    return m.uordblks / 2**20, m.fordblks / 2**20, m.hblkhd / 2**20


def _duckdb_jemalloc() -> tuple[float, float] | None:
    """DuckDB's bundled jemalloc (MB): allocated, resident; None where it has none."""
    import ctypes

    import duckdb

    try:
        mallctl = ctypes.CDLL(duckdb._duckdb.__file__).duckdb_je_mallctl
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p,
                        ctypes.c_size_t]
    epoch, size = ctypes.c_uint64(1), ctypes.c_size_t(8)
    mallctl(b"epoch", ctypes.byref(epoch), ctypes.byref(size), ctypes.byref(epoch), 8)  # refresh the stats
    out = []
    for name in (b"stats.allocated", b"stats.resident"):
        v, size = ctypes.c_size_t(0), ctypes.c_size_t(8)
        if mallctl(name, ctypes.byref(v), ctypes.byref(size), None, 0) != 0:
            return None
        out.append(v.value / 2**20)
    return out[0], out[1]


def _pymalloc_arenas() -> int:
    """Python's object allocator: arenas (256 KB or 1 MB each) it holds now."""
    import re

    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        m = re.search(rb"# arenas allocated current\s*=\s*([\d,]+)", f.read())
    return int(m.group(1).replace(b",", b"")) if m else -1


def _anonymous_rss() -> float:
    """RSS (MB) of anonymous mappings and the heap: what allocators hold, not code."""
    total, anonymous = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not line.startswith(("Rss", "Size")) and line[0] in "0123456789abcdef":
                anonymous = len(head) < 6 or head[5] == "[heap]"
            elif anonymous and head[0] == "Rss:":
                total += int(head[1])
    return total / 1024


def where_memory(server: app.Server) -> str:
    """One line: where this process's memory is (MB): anonymous RSS, DuckDB's own
    accounting and its jemalloc, pyarrow's pool, glibc's heap, Python's objects."""
    import pyarrow as pa

    assert server.store is not None
    if isinstance(server.store, StoreClient):
        return (f"this process anonymous {_anonymous_rss():.0f}, python {len(gc.get_objects()) / 1e3:.0f}k gc "
                f"objects; the store's process RSS {rss_mb(server.store.pid):.0f}; store: "
                f"{server.store.pending()} rows waiting")
    cur = server.store._con.cursor()
    try:
        duck = cur.execute("SELECT sum(memory_usage_bytes), sum(temporary_storage_bytes) FROM duckdb_memory()"
                           ).fetchone()
        tags = cur.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 1e6").fetchall()
    finally:
        cur.close()
    wal = Path(server.store.path + ".wal")
    wal_mb = wal.stat().st_size / 2**20 if wal.exists() else 0.0
    pool = pa.default_memory_pool()
    heap, je = _mallinfo(), _duckdb_jemalloc()
    glibc = f"glibc used {heap[0]:.0f} free {heap[1]:.0f} mmapped {heap[2]:.0f}" if heap else "glibc n/a"
    jem = f"its jemalloc {je[0]:.0f} resident {je[1]:.0f}" if je else "no jemalloc"
    return (f"anonymous {_anonymous_rss():.0f}; duckdb {(duck[0] if duck else 0) / 2**20:.0f} "
            f"({', '.join(f'{t.lower()} {b / 2**20:.0f}' for t, b in tags)}; WAL {wal_mb:.0f}, spilled "
            f"{(duck[1] if duck else 0) / 2**20:.0f}), {jem}; "
            f"arrow {pool.backend_name} {pool.bytes_allocated() / 2**20:.0f}; {glibc}; python "
            f"{sys.getallocatedblocks() / 1e3:.0f}k blocks in {_pymalloc_arenas()} arenas, "
            f"{len(gc.get_objects()) / 1e3:.0f}k gc objects (not frozen); store: {server.store.pending()} rows "
            f"waiting, {server.store.flushes} flushes")


async def soak(server: app.Server, boards: int, n: int, batch: int, now: float, rss_built: float,
               warm: int, detail: bool, trace: int, rate: float) -> None:
    """``n`` readings through ``Server.on_ingest``, made 10,000 at a time (the
    harness holds no more), ``rate`` a second (0: as fast as they go), on an
    event loop with the server's own timer loop running (ticks, the state
    snapshots saved as often as it decides) and the store flushing as it does;
    RSS as it goes. The baseline is RSS after the
    first ``warm`` readings (the server built, the store's tables, DuckDB's and
    pyarrow's first allocations made); the growth is what comes after it.
    ``trace``: tracemalloc from the baseline on, the top ``trace`` lines by
    growth at the end (slow: Python objects only)."""
    import tracemalloc

    done, step, t0 = 0, 10_000, time.perf_counter()
    report = max(step, n // 10)
    rss_warm = float("nan")
    samples: list[float] = []  # RSS every 10,000 readings after the baseline (MB)
    base_snap = None
    timer = asyncio.get_running_loop().create_task(server._timer_loop())
    spacing = 1 / rate if rate else 0.001  # seconds between two readings' time stamps

    def total() -> float:
        """RSS of this process plus, with ``--writer process``, the store's process."""
        child = server.store.pid if isinstance(server.store, StoreClient) else None
        return rss_mb() + (rss_mb(child) if child else 0.0)

    def line(label: str) -> float:
        rss = total()
        since = f"{rss - rss_warm:+.0f} MB since warm, " if rss_warm == rss_warm else ""
        print(f"{label}: RSS {rss:.0f} MB ({since}{rss - rss_built:+.0f} MB since built), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        if detail:
            print(f"    {where_memory(server)}", flush=True)
        return rss

    while done < n:
        k = min(step, n - done)
        msgs = payloads(boards, k, now + done * spacing)
        items = [ingest_item(t, p, False, now + done * spacing) for t, p in msgs]
        del msgs
        for b0 in range(0, k, batch):
            server.on_ingest(items[b0:b0 + batch])
            # one batch a turn of the loop, as the ingest reader hands them over
            await asyncio.sleep(max(0.0, t0 + (done + b0 + batch) / rate - time.perf_counter()) if rate else 0)
        del items
        done += k
        if done > warm:
            samples.append(total())
        if done == warm:
            assert server.store is not None
            server.store.flush()
            gc.collect()
            rss_warm = total()
            line(f"{done:>9} readings (warm, the baseline; store flushed, full collection)")
            if trace:
                tracemalloc.start(1)
                base_snap = tracemalloc.take_snapshot()
        elif done % report == 0 or done == n:
            line(f"{done:>9} readings")
    timer.cancel()
    assert server.store is not None
    server.store.flush()
    gc.collect()
    end = line("after a flush and a full collection")
    stored = server.store.query("SELECT count(*) FROM readings").rows[0][0]
    last = sorted(samples[-max(1, len(samples) // 10):])  # the last tenth of the run
    print(f"readings stored {stored}; growth from warm ({warm:,} readings), RSS sampled every 10,000 readings: "
          f"over the last tenth median {last[len(last) // 2] - rss_warm:+.0f} MB, most {last[-1] - rss_warm:+.0f} MB; "
          f"the most in the run {max(samples) - rss_warm:+.0f} MB; after the flush {end - rss_warm:+.0f} MB")
    if detail:
        print("    every 10,000 readings (MB since warm): " + " ".join(f"{x - rss_warm:+.0f}" for x in samples))
    if base_snap is not None:
        top = tracemalloc.take_snapshot().compare_to(base_snap, "lineno")
        print(f"tracemalloc: Python allocations {sum(s.size_diff for s in top) / 2**20:+.1f} MB since warm; top:")
        for st in top[:trace]:
            print(f"    {st}")
        tracemalloc.stop()


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
    ap.add_argument("--decode", action="store_true",
                    help="--batch: time the decoding too (ingest.item per message), as the MQTT 5 link does it")
    ap.add_argument("--soak", type=int, default=0, metavar="N",
                    help="memory: N readings (through on_ingest, --batch or 50 a batch), RSS every tenth")
    ap.add_argument("--memory-limit", type=parse_size, default=None, metavar="SIZE",
                    help="the store's [store] memory_limit (64MB, 0 = DuckDB's default); default: kaiser.toml's")
    ap.add_argument("--rate", type=float, default=5000, metavar="R",
                    help="--soak: readings a second (0: as fast as they go, the store's writer falls behind)")
    ap.add_argument("--warm", type=int, default=50_000, metavar="N",
                    help="--soak: the baseline is RSS after the first N readings (a multiple of 10,000)")
    ap.add_argument("--detail", action="store_true",
                    help="--soak: where the memory is at every report (DuckDB, pyarrow, glibc, Python)")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="--soak: tracemalloc from the baseline on, print the top N lines by growth (slow)")
    ap.add_argument("--no-flush", action="store_true",
                    help="the store's writer never flushes during the run (what its DuckDB writes cost the tail)")
    ap.add_argument("--writer", choices=("thread", "process"), default="thread",
                    help="the store's writer: a thread here (default) or its own process as the server runs it "
                         "(--soak then counts both processes' RSS; us/reading leaves the store's process out)")
    ap.add_argument("--no-gc-tuning", action="store_true", help="leave the collector as Python starts it")
    ap.add_argument("--pattern", choices=sorted(HIGH), default="cross",
                    help="cross (default): every other reading of a sensor above 25, an edge that sends a command; "
                         "quiet: 24.5/23.5, the facts change but no rule fires (what commands cost is the difference)")
    a = ap.parse_args(argv)
    if a.soak and (a.warm <= 0 or a.warm % 10_000 or a.warm >= a.soak):
        ap.error("--warm must be a multiple of 10,000 below --soak")
    with tempfile.TemporaryDirectory(prefix="kaiser-prof-") as tmp:
        rss0, t_build = rss_mb(), time.perf_counter()
        server = build(Path(tmp), a.boards, 1e9 if a.no_flush else 1.0, a.memory_limit, a.writer)
        t_build = time.perf_counter() - t_build
        rss_built = rss_mb()
        print(f"{a.boards} boards, {2 * a.boards} rules: loaded, linted, compiled and the server built in "
              f"{t_build:.2f} s; RSS {rss0:.0f} -> {rss_built:.0f} MB "
              f"({(rss_built - rss0) * 1024 / max(1, 2 * a.boards):.1f} KB a rule)", flush=True)
        now = server.clock.now()
        msgs = payloads(a.boards, a.readings + 2 * a.boards, now, a.pattern)
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
            asyncio.run(soak(server, a.boards, a.soak, a.batch or 50, now, rss_built, a.warm, a.detail, a.trace,
                             a.rate))
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
        items = [ingest_item(t, p, False, now) for t, p in timed] if a.batch and not a.decode else []
        for k0 in range(0, len(timed), step):
            part = timed[k0:k0 + step]
            w0, c0 = time.perf_counter(), time.thread_time()
            if a.batch and a.decode:
                for b0 in range(0, len(part), a.batch):
                    server.on_ingest([ingest_item(t, p, False, now, plain=False) for t, p in part[b0:b0 + a.batch]])
            elif a.batch:
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
              f"{f' through on_ingest, {a.batch} a batch' if a.batch else ''}"
              f"{', decoded in the loop' if a.batch and a.decode else ''} "
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
