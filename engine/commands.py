"""The ``kaiser`` commands that run or talk to the server: run, estop, reset, why,
history, query, plan (engine/cli.py maps the names). ``engine.app`` holds the server
itself; this module only parses, prints and calls it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.adapters.store import QueryResult, Store
from engine.app import Server, _errors, _state_text, load_rules, version_of
from engine.config.settings import Settings, load_settings
from engine.diagnostics import render
from engine.errors import ConfigError, KaiserError, StoreError
from engine.model import Outputs, Reading
from engine.units import parse_duration

log = logging.getLogger("kaiser")



def _setup_logging() -> None:
    level = os.environ.get("KAISER_LOG", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # websockets logs every HTTP GET (/health, /query) as a "rejected" handshake
    logging.getLogger("websockets").setLevel(logging.WARNING)


def _settings(args: argparse.Namespace) -> Settings | None:
    path = getattr(args, "config", None)
    try:
        return load_settings(path if path and (Path(path).exists() or path != "kaiser.toml") else None)
    except ConfigError as exc:
        print(render(exc.diagnostics) or str(exc), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """``kaiser run``: the server until SIGTERM/Ctrl-C; SIGHUP reloads."""
    _setup_logging()
    settings = _settings(args)
    if settings is None:
        return 1
    try:
        return asyncio.run(_serve(settings))
    except KeyboardInterrupt:
        return 0


async def _serve(settings: Settings) -> int:
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(server.reload()))
    try:
        await server.start()
    except ConfigError as exc:
        print(render(exc.diagnostics) or str(exc), file=sys.stderr)
        print(f"kaiser: refusing to start: {exc}", file=sys.stderr)
        await server.stop()
        return 1
    except (StoreError, OSError) as exc:  # store locked by another process, port taken
        print(f"kaiser: cannot start: {exc}", file=sys.stderr)
        await server.stop()
        return 1
    try:
        await stop.wait()
    finally:
        await server.stop()
    return 0


# ---- talking to the running server


def _ws_url(settings: Settings) -> str:
    w = settings.websocket
    host = w.host if w.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"ws://{host}:{w.port}/ws"


async def _send_control(url: str, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    async with connect(url, open_timeout=timeout) as ws:
        await ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            if reply.get("event_type") in ("control_result", "error"):
                return reply


def _cli_token(settings: Settings) -> tuple[str | None, str]:
    """The control key the CLI sends: ``$KAISER_WS_TOKEN`` (``[websocket] token_env``)
    when set, else the running server's token file. -> (token, where it came from)."""
    from engine import auth

    w = settings.websocket
    if w.token:
        return w.token, f"${w.token_env}"
    path = auth.token_path(settings.store.path, w.port)
    return auth.read_token(path), str(path)


def _control_cli(args: argparse.Namespace, msg: dict[str, Any]) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    token, source = _cli_token(settings)
    if token:
        msg["token"] = token
    msg["who"] = _operator()  # recorded as "KEY (login)": the key names who may, this who did
    url = _ws_url(settings)
    try:
        reply = asyncio.run(_send_control(url, msg))
    except (OSError, TimeoutError) as exc:
        print(f"kaiser: no server answers on {url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"kaiser: {url}: {exc}", file=sys.stderr)
        return 1
    if reply.get("event_type") == "error":
        message = str(reply.get("data", {}).get("message"))
        print(f"kaiser: {message}", file=sys.stderr)
        if "token" in message:
            print(f"kaiser: the CLI sends ${settings.websocket.token_env} when it is set, else the "
                  f"token the server writes at start ({source}: {'read' if token else 'not readable'})",
                  file=sys.stderr)
        return 1
    print(json.dumps(reply.get("data", {}), indent=2))
    return 0


def cmd_estop(args: argparse.Namespace) -> int:
    """``kaiser estop [--device D] --reason TEXT`` through the running server."""
    msg: dict[str, Any] = {"type": "emergency_stop", "reason": args.reason}
    if args.device:
        msg["device"] = args.device
    return _control_cli(args, msg)


def cmd_reset(args: argparse.Namespace) -> int:
    """``kaiser reset [--device D]``: lift a latched stop (turns nothing on)."""
    msg: dict[str, Any] = {"type": "reset_emergency", "reason": args.reason}
    if args.device:
        msg["device"] = args.device
    return _control_cli(args, msg)


def run_query(settings: Settings, sql: str) -> QueryResult:
    """Read-only SQL: through the running server (DuckDB has one writer process),
    else straight from the file opened read-only, in the same sandbox
    (engine/adapters/query.py). Raises StoreError."""
    w = settings.websocket
    host = w.host if w.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = f"http://{host}:{w.port}/query?" + urllib.parse.urlencode({"sql": sql})
    token, source = _cli_token(settings)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=w.query_timeout + 20) as r:
            data = json.loads(r.read())
            return QueryResult(data["columns"], [tuple(x) for x in data["rows"]], data.get("truncated", False))
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", str(e))
        except ValueError:
            msg = str(e)
        if e.code == 401:
            msg += f" (the CLI sends ${w.token_env} when it is set, else the server's token file: {source})"
        raise StoreError(msg) from None
    except (OSError, ValueError):
        pass  # no server: open the file
    path = settings.store.path
    if path == ":memory:" or not Path(path).exists():
        raise StoreError(f"no server answers on {host}:{w.port} and there is no store file {path}")
    store = Store(path, read_only=True)
    try:
        return store.query(sql, timeout=w.query_timeout)
    finally:
        store.close()


def _print_table(res: QueryResult) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(*res.columns, show_lines=False)
        for row in res.rows:
            t.add_row(*["" if v is None else str(v) for v in row])
        Console().print(t)
    except Exception:
        print("\t".join(res.columns))
        for row in res.rows:
            print("\t".join("" if v is None else str(v) for v in row))
    if res.truncated:
        print(f"(first {len(res.rows)} rows)")


def cmd_query(args: argparse.Namespace) -> int:
    """``kaiser query SQL``: read-only SQL against the store."""
    settings = _settings(args)
    if settings is None:
        return 2
    try:
        res = run_query(settings, args.sql)
    except StoreError as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    _print_table(res)
    return 0


def _since(text: str) -> float:
    return time.time() - parse_duration(text)


def cmd_history(args: argparse.Namespace) -> int:
    """``kaiser history SENSOR [--since 1h]``."""
    settings = _settings(args)
    if settings is None:
        return 2
    try:
        since = _since(args.since)
    except (KaiserError, ValueError) as exc:
        print(f"kaiser: bad --since: {exc}", file=sys.stderr)
        return 2
    sensor = str(args.sensor).replace("'", "''")
    sql = (f"SELECT ts, value, unit, quality, retained FROM readings WHERE sensor = '{sensor}' "
           f"AND ts >= to_timestamp({since}) ORDER BY ts")
    try:
        res = run_query(settings, sql)
    except StoreError as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    if not res.rows:
        print(f"no readings of {args.sensor} in the last {args.since}")
        return 0
    _print_table(res)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    """``kaiser why ACTUATOR``: its last commands and blocks with rule, trigger facts,
    guard reason and the firmware's answers."""
    settings = _settings(args)
    if settings is None:
        return 2
    ref = str(args.actuator).replace("'", "''")
    n = int(args.n)
    try:
        cmds = run_query(settings, (
            "SELECT epoch(ts), outcome, value, duration, source, rule, reason, code, block_reason, config_version "
            f"FROM commands WHERE actuator = '{ref}' ORDER BY ts DESC LIMIT {n}"))
        if not cmds.rows:
            print(f"no commands or blocks recorded for {args.actuator}")
            return 0
        t0 = min(r[0] for r in cmds.rows) - 5
        runs = run_query(settings, (
            "SELECT epoch(ts), rule, trigger, actions, outcome FROM rule_runs "
            f"WHERE ts >= to_timestamp({t0}) ORDER BY ts"))
        resp = run_query(settings, (
            "SELECT epoch(ts), command, value, success, message FROM command_responses "
            f"WHERE actuator = '{ref}' AND ts >= to_timestamp({t0}) ORDER BY ts"))
        status = run_query(settings, (
            "SELECT epoch(ts), state, value, emergency FROM actuator_status "
            f"WHERE actuator = '{ref}' ORDER BY ts DESC LIMIT 1"))
        evs = run_query(settings, (
            "SELECT epoch(ts), kind, message FROM events "
            f"WHERE subject = '{ref}' AND ts >= to_timestamp({t0}) ORDER BY ts"))
        device = ref.split(".", 1)[0]
        # what the board was sent and answered: config pushes matched by correlation id
        board = run_query(settings, (
            "SELECT epoch(ts), kind, message FROM ("
            "SELECT ts, kind, message FROM events "
            f"WHERE subject = '{device}' AND kind IN ('config', 'config_response') ORDER BY ts DESC LIMIT 4"
            ") ORDER BY ts"))
    except StoreError as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    print(f"why {args.actuator}: last {len(cmds.rows)} command(s), newest first")
    for ts, outcome, value, duration, source, rule, reason, code, block_reason, ver in cmds.rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
        dur = f" for {duration:.0f} s" if duration else ""
        who = f"rule {rule}" if rule else source
        head = f"{when}  {outcome.upper():7s} {_state_text(value)}{dur}  by {who} (config {ver})"
        print(head)
        if reason:
            print(f"    because: {reason}")
        if rule:
            trig = [r for r in runs.rows if r[1] == rule and r[0] <= ts + 0.001]
            if trig:
                facts = trig[-1][2]
                print(f"    trigger: {facts}")
        if outcome == "blocked":
            print(f"    guard: {code}: {block_reason}")
        else:
            answers = [r for r in resp.rows if r[0] >= ts - 0.001]
            if answers:
                a = answers[0]
                print(f"    firmware: {a[1]} {'ok' if a[3] else 'REFUSED'}: {a[4]}")
            else:
                print("    firmware: no response recorded")
    if status.rows:
        ts, state, value, emergency = status.rows[0]
        print(f"now reported: {'on' if state else 'off'} ({value:.2f}), emergency {emergency}")
    for ts, kind, message in evs.rows:
        print(f"event {time.strftime('%H:%M:%S', time.localtime(ts))} {kind}: {message}")
    for ts, kind, message in board.rows:
        print(f"board {time.strftime('%H:%M:%S', time.localtime(ts))} {kind}: {message}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """``kaiser plan [PATH] --since 24h``: replay stored readings through the rules
    at PATH on a virtual clock; print the commands that would differ from what was sent."""
    from engine.pipeline import Kaiser

    settings = _settings(args)
    if settings is None:
        return 2
    rules = Path(args.path) if args.path else settings.kaiser.rules
    deployment, diagnostics, version = load_rules(rules, settings.kaiser.tz)
    errors = _errors(diagnostics)
    if errors:
        print(render(errors), file=sys.stderr)
        return 1
    try:
        since = _since(args.since)
        readings = run_query(settings, (
            "SELECT sensor, value, epoch(ts), quality, unit, retained FROM readings "
            f"WHERE ts >= to_timestamp({since}) ORDER BY ts"))
        sent = run_query(settings, (
            "SELECT epoch(ts), actuator, value FROM commands WHERE outcome = 'sent' "
            f"AND ts >= to_timestamp({since}) ORDER BY ts"))
    except (StoreError, KaiserError, ValueError) as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    stored = [Reading(s, float(v), float(t), q or "good", u or "", bool(r)) for s, v, t, q, u, r in readings.rows]
    # boards count as online: the replay is about what the rules decide, not who was reachable
    kaiser = Kaiser(deployment, assume_online=True, start=stored[0].ts if stored else since)
    planned = replay(kaiser, stored, until=time.time())
    actual = [(float(t), a, float(v)) for t, a, v in sent.rows]
    only_new, only_old = diff_commands(planned, actual)
    print(f"plan: rules {rules} (version {version.id}) over {len(readings.rows)} readings since {args.since}")
    if not only_new and not only_old:
        print(f"no difference: {len(planned)} command(s), the same as were sent")
        return 0
    for t, a, v in only_new:
        print(f"+ {time.strftime('%m-%d %H:%M:%S', time.localtime(t))} {a} {_state_text(v)}  (would be sent)")
    for t, a, v in only_old:
        print(f"- {time.strftime('%m-%d %H:%M:%S', time.localtime(t))} {a} {_state_text(v)}  (was sent, would not be)")
    print(f"{len(only_new)} new, {len(only_old)} gone")
    return 0


def replay(kaiser: Any, readings: list[Reading], until: float | None = None) -> list[tuple[float, str, float]]:
    """Feed stored readings through a fresh Kaiser on a virtual clock: the clock stops
    at every due instant, so timers fire on time; then runs on to ``until``. Returns
    the commands it would send as (ts, actuator, value)."""
    out: list[tuple[float, str, float]] = []
    t_now = readings[0].ts if readings else 0.0

    def collect(o: Outputs) -> None:
        out.extend((t_now, a.command.actuator, a.command.value) for a in o.sent)

    def run_until(t: float) -> None:
        nonlocal t_now
        last: float | None = None
        while True:
            due = kaiser.next_due()
            if due is None or due > t:
                return
            step = max(t_now, due)
            if last is not None and step <= last:
                step = last + 0.001  # a due time the tick did not clear: step on, never spin
            if step > t:
                return
            t_now = last = step
            collect(kaiser.tick(t_now))

    for r in readings:
        run_until(r.ts)
        t_now = max(t_now, r.ts)
        collect(kaiser.receive(replace(r, retained=False), t_now))
    if until is not None:
        run_until(until)
    return out


def diff_commands(
    planned: list[tuple[float, str, float]], actual: list[tuple[float, str, float]], slack: float = 2.0
) -> tuple[list[tuple[float, str, float]], list[tuple[float, str, float]]]:
    """Commands only in ``planned`` and only in ``actual`` (same actuator and value
    within ``slack`` seconds match)."""
    left = list(actual)
    only_new = []
    for p in planned:
        hit = next((i for i, a in enumerate(left) if a[1] == p[1] and abs(a[2] - p[2]) < 1e-6
                    and abs(a[0] - p[0]) <= slack), None)
        if hit is None:
            only_new.append(p)
        else:
            left.pop(hit)
    return only_new, left


__all__ = [
    "Server",
    "cmd_estop",
    "cmd_history",
    "cmd_plan",
    "cmd_query",
    "cmd_reset",
    "cmd_run",
    "cmd_why",
    "diff_commands",
    "load_rules",
    "replay",
    "run_query",
    "version_of",
]


def _operator() -> str:
    """Who runs the CLI, for the record of emergency stops and resets."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (containers)
        return f"uid {os.getuid()}"
