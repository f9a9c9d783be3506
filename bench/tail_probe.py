#!/usr/bin/env python3
"""Where the latency tail of a live ``kaiser run`` comes from: every socket read, timed.

    .venv/bin/python bench/tail_probe.py                        # 3,000 readings/s for 8 s, once
    .venv/bin/python bench/tail_probe.py --rate 8000 --runs 3
    .venv/bin/python bench/tail_probe.py --flush 1h             # no store flush during the run
    .venv/bin/python bench/tail_probe.py --pattern below --rate 8000   # values that cross no threshold

The setup is bench_server.py's (its own Mosquitto with ``set_tcp_nodelay``, 500
boards, 1,000 rules, espfleet ``cross``: a command for every other reading), with
one Kaiser and no peers. Inside the server (a ``sitecustomize`` in the bench's
work dir, so nothing in ``engine/`` knows about it) the probe records, with
``time.perf_counter`` and the thread's CPU time:

- every read of the MQTT 5 link (``Mqtt5Link._feed``: decoding, the rules, the
  guard, publishing): wall time, CPU time, the messages it carried;
- the store's flushes (``StoreClient._send_pending``, on its sender thread), the
  state snapshots (``Server._save_snapshot``) and garbage collections;
- how late a task sleeping 1 ms on the event loop wakes (the event loop held up).

It prints, per run: espfleet's p50/p99; the CPU of a read by how many messages it
carried (the first message of a read pays for caches gone cold since the last one);
the reads whose wall time exceeds their CPU time by more than 1 ms (the thread
waited for a core or for the GIL); the event loop's lateness and what overlapped
its worst moments. Not a test and not part of CI: docs/performance.md says what it
found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: appended to the bench's sitecustomize: runs in the server's process at start-up
PROBE = '''
import os as _os
if _os.environ.get("KAISER_TAIL_PROBE"):
    import sys as _sys
    _sys.path.insert(0, {bench!r})
    import tail_probe as _tp
    _tp.install(_os.environ["KAISER_TAIL_PROBE"])
'''


def install(out: str) -> None:
    """In the server's process: wrap the hot entry points, dump the records at exit."""
    import asyncio
    import atexit
    import gc

    from engine import app
    from engine.adapters import mqtt5link, storeproc

    pc, tt = time.perf_counter, time.thread_time
    rec: list[tuple[float, str, float, float, int]] = []  # (start, what, wall, cpu, messages)
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = pc()
        else:
            d = pc() - gc_start[0]
            rec.append((gc_start[0], f"gc{info['generation']}", d, d, 0))

    gc.callbacks.append(on_gc)

    def timed(cls: type, name: str, count: str | None = None) -> None:
        f = getattr(cls, name)

        def w(self: Any, *a: Any, **k: Any) -> Any:
            n0 = getattr(self, count) if count else 0
            t, c = pc(), tt()
            try:
                return f(self, *a, **k)
            finally:
                rec.append((t, name, pc() - t, tt() - c, (getattr(self, count) - n0) if count else 0))

        setattr(cls, name, w)

    timed(mqtt5link.Mqtt5Link, "_feed", "received")
    timed(app.Server, "_save_snapshot")
    timed(storeproc.StoreClient, "_send_pending")
    start = app.Server.start

    async def started(self: Any) -> None:
        await start(self)

        async def late() -> None:
            while True:
                t = pc()
                await asyncio.sleep(0.001)
                d = pc() - t - 0.001
                if d > 0.001:
                    rec.append((t, "late", d, 0.0, 0))

        self._tail_probe = asyncio.get_running_loop().create_task(late())

    app.Server.start = started  # type: ignore[method-assign]

    def dump() -> None:
        with open(out, "w") as fh:
            json.dump({"pc": pc(), "wall": time.time(), "rec": rec}, fh)

    atexit.register(dump)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def report(d: dict[str, Any], t0: float, t1: float) -> list[str]:
    """What one run's records say (times in the measured window only)."""
    off = d["wall"] - d["pc"]
    rec = [(t + off, what, w, c, n) for t, what, w, c, n in d["rec"] if t0 <= t + off <= t1]
    span = t1 - t0
    out: list[str] = []
    reads = [r for r in rec if r[1] == "_feed" and r[4] > 0]
    buckets = ((1, 1), (2, 3), (4, 7), (8, 15), (16, 10**9))
    out.append("CPU of a read by the messages it carried (median us a read / a message):")
    for lo, hi in buckets:
        b = [r for r in reads if lo <= r[4] <= hi]
        if b:
            cpu = _pct([r[3] * 1e6 for r in b], 0.5)
            per = _pct([r[3] * 1e6 / r[4] for r in b], 0.5)
            name = str(lo) if lo == hi else (f"{lo}-{hi}" if hi < 10**9 else f"{lo}+")
            out.append(f"  {name:>5} messages: {len(b):6d} reads, {cpu:7.0f} us a read, {per:5.0f} us a message")
    msgs = sum(r[4] for r in reads)
    if msgs:
        out.append(f"  all: {len(reads)} reads of {msgs} messages, "
                   f"{sum(r[3] for r in reads) / msgs * 1e6:.0f} us CPU a message")
    held = [r for r in reads if r[2] - r[3] > 0.001]
    out.append(f"reads that waited > 1 ms for a core or the GIL: {len(held)} ({len(held) / span:.1f}/s), "
               f"{sum(r[2] - r[3] for r in held) * 1e3:.0f} ms in all, worst "
               f"{max((r[2] - r[3] for r in held), default=0) * 1e3:.1f} ms")
    late = [r for r in rec if r[1] == "late"]
    for what in ("_send_pending", "_save_snapshot", "gc0", "gc1", "gc2"):
        xs = [r[2] * 1e3 for r in rec if r[1] == what]
        if xs:
            cpu = sum(r[3] for r in rec if r[1] == what) * 1e3
            out.append(f"{what}: {len(xs)} ({len(xs) / span:.1f}/s), wall median {_pct(xs, 0.5):.2f} "
                       f"max {max(xs):.2f} ms, CPU {cpu:.1f} ms in all")
    if late:
        ms = [r[2] * 1e3 for r in late]
        out.append(f"event loop late > 1 ms: {len(late)} ({len(late) / span:.1f}/s), > 5 ms: "
                   f"{sum(1 for x in ms if x > 5)}, worst {max(ms):.1f} ms")
        flushes = [(r[0], r[0] + r[2]) for r in rec if r[1] in ("_send_pending", "_save_snapshot")
                   or r[1].startswith("gc")]
        bad = [r for r in late if r[2] > 0.003]
        near = sum(1 for r in bad if any(a - 0.001 < r[0] + r[2] and r[0] < b + 0.001 for a, b in flushes))
        out.append(f"  of those > 3 ms ({len(bad)}), {near} overlapped a flush, a snapshot or a collection")
    return out


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    import bench_server as bs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tools", default=None, help="dir with espfleet.py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--broker", choices=["own", "given"], default="own")
    ap.add_argument("--boards", type=int, default=500)
    ap.add_argument("--rate", type=float, default=3000.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--pattern", default="cross", choices=("cross", "below"),
                    help="espfleet's values: cross 25 at every reading (a command every other one), "
                         "or stay between the rules' thresholds (below: 20.00-20.09, no command)")
    ap.add_argument("--flush", default="1s", help="[store] flush_interval of the server")
    ap.add_argument("--lanes", type=int, default=None, help="[mqtt] lanes of the server (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir and the records")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.rate <= 0 or a.duration <= 0:
        ap.error("--runs, --rate and --duration must be positive")
    tools = bs.tools_dir(a.tools)
    broker = bs.start_broker(a) if a.broker == "own" else None
    work = Path(tempfile.mkdtemp(prefix="kaiser-tail-"))
    try:
        ws = bs.free_port()
        toml = bs.write_deployment(work, a.boards, a.host, a.port, ws)
        toml.write_text(toml.read_text().replace('flush_interval = "1s"', f'flush_interval = "{a.flush}"'))
        if a.lanes is not None:
            toml.write_text(toml.read_text().replace("[mqtt]\n", f"[mqtt]\nlanes = {a.lanes}\n"))
        site = work / "sitecustomize.py"
        site.write_text(site.read_text() + PROBE.format(bench=str(HERE)))
        for i in range(a.runs):
            out = work / f"probe{i}.json"
            os.environ["KAISER_TAIL_PROBE"] = str(out)
            k = bs.KaiserProc(work, toml, ws)
            try:
                bs.heartbeats(a)
                time.sleep(0.5)
                bs.espfleet(tools, a, min(a.rate, 1000.0), a.warmup, "probe-warmup")
                bs.espfleet(tools, a, 1000.0, max(1.0, 2.0 * a.boards / 1000.0), "probe-settle", pattern="below")
                time.sleep(1.0)
                u0 = bs.cpu_times(f"/proc/{k.p.pid}/task/{k.p.pid}/stat")  # its main thread
                t0 = time.time()
                r = bs.espfleet(tools, a, a.rate, a.duration, f"probe-{a.rate:g}", pattern=a.pattern)
                t1 = time.time()
                u1 = bs.cpu_times(f"/proc/{k.p.pid}/task/{k.p.pid}/stat")
            finally:
                k.stop()
            print(bs.row(f"kaiser run {i + 1}", r), flush=True)
            if not out.exists():
                print("  (the server wrote no records: did it stop cleanly?)")
                continue
            n = max(1, r["sent"])
            print(f"  main thread: user {(u1[0] - u0[0]) / n * 1e6:.0f} us, system {(u1[1] - u0[1]) / n * 1e6:.0f} us "
                  "a reading (/proc, 10 ms ticks)")
            for line in report(json.loads(out.read_text()), t0, t1):
                print("  " + line, flush=True)
    finally:
        os.environ.pop("KAISER_TAIL_PROBE", None)
        if broker is not None:
            bs._stop(broker)
        if a.keep:
            print(f"work dir: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
