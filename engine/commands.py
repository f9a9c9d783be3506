"""The ``kaiser`` commands that run or talk to the server: run, estop, reset, command,
why, history, query, plan (engine/cli.py maps the names). ``engine.app`` holds the
server itself; this module only parses, prints and calls it.

Commands that print records take ``--format table|json|csv`` (engine/output.py:
tables only on a terminal, times in ``[kaiser] tz``). A reference that names nothing
(``kaiser history gh.soill``) exits 1 with "did you mean".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine import history, output
from engine.adapters.git import GitError
from engine.adapters.store import QueryResult, Store
from engine.app import Server, _errors, _state_text, load_rules, version_of
from engine.config.settings import Settings, load_settings
from engine.diagnostics import render
from engine.errors import ConfigError, KaiserError, StoreError
from engine.model import Outputs, Reading
from engine.units import parse_duration

log = logging.getLogger("kaiser")



def _setup_logging(fmt: str | None = None) -> None:
    from engine import logs

    logs.setup(fmt)


def _settings(args: argparse.Namespace) -> Settings | None:
    path = getattr(args, "config", None)
    try:
        return load_settings(path if path and (Path(path).exists() or path != "kaiser.toml") else None)
    except ConfigError as exc:
        print(render(exc.diagnostics) or str(exc), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """``kaiser run``: the server until SIGTERM/Ctrl-C; SIGHUP reloads."""
    _setup_logging(getattr(args, "log_format", None))
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
        loop.add_signal_handler(signal.SIGHUP, lambda: _hangup(server, loop))
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


def _hangup(server: Server, loop: asyncio.AbstractEventLoop) -> None:
    """SIGHUP: in pull mode fetch now (docs/gitops.md), else reload the rules dir."""
    if server.gitops is not None:
        server.gitops.wake()
    else:
        loop.create_task(server.reload())


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


def _known(settings: Settings) -> Any:
    """The deployment at ``[kaiser] rules`` for "did you mean" (None when it cannot
    be loaded: then every name is passed on and the server or the store judges)."""
    from engine.config import load_deployment

    rules = Path(settings.kaiser.rules)
    if not rules.exists():
        return None
    try:
        deployment, _ = load_deployment(rules, settings.kaiser.tz)
    except Exception:
        return None
    return deployment


def _unknown(kind: str, name: str, known: list[str]) -> int:
    print(f"kaiser: unknown {kind} {name!r}{output.did_you_mean(name, known)}", file=sys.stderr)
    return 1


def _control_cli(args: argparse.Namespace, msg: dict[str, Any]) -> int:
    settings = _settings(args)
    if settings is None:
        return 2
    deployment = _known(settings) if msg.get("device") or msg.get("actuator") else None
    if deployment is not None:
        if msg.get("device") and msg["device"] not in deployment.devices:
            return _unknown("device", msg["device"], list(deployment.devices))
        if msg.get("actuator") and deployment.actuator(msg["actuator"]) is None:
            return _unknown("actuator", msg["actuator"], [a.ref for d in deployment.devices.values()
                                                          for a in d.actuators])
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
    data = reply.get("data", {})
    fmt = output.choose(getattr(args, "format", None))
    if fmt == "table":  # for people: one sentence
        print(_control_sentence(msg, data))
        return 0
    data = {k: v for k, v in data.items() if k != "request"} | {"request": msg.get("type")}
    if fmt == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        cols = list(data)
        output.emit(cols, [[json.dumps(data[c], default=str) if isinstance(data[c], dict | list) else data[c]
                            for c in cols]], "csv", output.zone(settings.kaiser.tz))
    return 0


def _control_sentence(msg: dict[str, Any], data: dict[str, Any]) -> str:
    kind, target = msg.get("type"), data.get("target") or msg.get("device") or "all"
    scope = "every board" if target == "all" else target
    if kind == "emergency_stop":
        return (f"EMERGENCY STOP latched for {scope}: {msg.get('reason')} "
                f"(lift it with: kaiser reset{'' if target == 'all' else ' --device ' + target})")
    if kind == "reset_emergency":
        return f"emergency stop of {scope} reset; nothing was switched on"
    if kind == "command":
        sent = data.get("sent") or []
        if not sent:
            return f"{msg.get('actuator')}: nothing to send (already {msg.get('set')})"
        return "; ".join(f"sent {c.get('actuator')} {_state_text(float(c.get('value') or 0))}"
                         + (f" for {float(c['duration']):g} s" if c.get("duration") else "")
                         + f" ({c.get('reason')})" for c in sent)
    return json.dumps(data, indent=2, default=str)


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


def _print_records(res: QueryResult, args: argparse.Namespace, settings: Settings) -> None:
    output.emit(res.columns, res.rows, output.choose(getattr(args, "format", None)),
                output.zone(settings.kaiser.tz))
    if res.truncated:
        print(f"kaiser: only the first {len(res.rows)} rows", file=sys.stderr)


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
    _print_records(res, args, settings)
    return 0


def _since(text: str) -> float:
    return time.time() - parse_duration(text)


def _since_arg(args: argparse.Namespace) -> float | None:
    """``--since D`` as Unix seconds, or None after saying why it is bad."""
    try:
        return _since(args.since)
    except (KaiserError, ValueError) as exc:
        print(f"kaiser: bad --since: {exc}", file=sys.stderr)
        return None


def cmd_history(args: argparse.Namespace) -> int:
    """``kaiser history SENSOR [--since 1h]``."""
    settings = _settings(args)
    if settings is None:
        return 2
    since = _since_arg(args)
    if since is None:
        return 2
    deployment = _known(settings)
    if deployment is not None and deployment.sensor(str(args.sensor)) is None:
        return _unknown("sensor", str(args.sensor), deployment.sensor_refs())
    sensor = str(args.sensor).replace("'", "''")
    sql = (f"SELECT ts, value, unit, quality, retained FROM readings WHERE sensor = '{sensor}' "
           f"AND ts >= to_timestamp({since}) ORDER BY ts")
    try:
        res = run_query(settings, sql)
    except StoreError as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    if not res.rows:
        if deployment is None:  # no device map to judge the name by: ask the store
            with contextlib.suppress(StoreError):
                known = [str(r[0]) for r in run_query(settings, "SELECT sensor FROM latest_readings").rows]
                if known and args.sensor not in known:
                    return _unknown("sensor", str(args.sensor), known)
        print(f"no readings of {args.sensor} in the last {args.since}", file=sys.stderr)
        return 0
    _print_records(res, args, settings)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    """``kaiser why ACTUATOR``: its last commands and blocks with rule, trigger facts,
    guard reason and the firmware's answers (``--format json|csv``: one record per
    command)."""
    settings = _settings(args)
    if settings is None:
        return 2
    deployment = _known(settings)
    if deployment is not None and deployment.actuator(str(args.actuator)) is None:
        return _unknown("actuator", str(args.actuator),
                        [a.ref for d in deployment.devices.values() for a in d.actuators])
    tz = output.zone(settings.kaiser.tz)
    ref = str(args.actuator).replace("'", "''")
    n = int(args.n)
    try:
        cmds = run_query(settings, (
            "SELECT epoch(ts), outcome, value, duration, source, rule, reason, code, block_reason, config_version "
            f"FROM commands WHERE actuator = '{ref}' ORDER BY ts DESC LIMIT {n}"))
        if not cmds.rows:
            print(f"no commands or blocks recorded for {args.actuator}", file=sys.stderr)
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
    records = []
    for ts, outcome, value, duration, source, rule, reason, code, block_reason, ver in cmds.rows:
        trig = [r for r in runs.rows if rule and r[1] == rule and r[0] <= ts + 0.001]
        answers = [r for r in resp.rows if r[0] >= ts - 0.001] if outcome != "blocked" else []
        a = answers[0] if answers else None
        records.append({
            "ts": float(ts), "outcome": outcome, "value": value, "duration": duration, "source": source,
            "rule": rule, "reason": reason, "code": code, "block_reason": block_reason, "config_version": ver,
            "trigger": trig[-1][2] if trig else None,
            "firmware": None if a is None else f"{a[1]} {'ok' if a[3] else 'REFUSED'}: {a[4]}",
        })
    fmt = getattr(args, "format", None) or "table"  # a narrative, not a table: readable in a pipe too
    if fmt in ("json", "csv"):
        cols = list(records[0])
        output.emit(cols, [[output.when(r["ts"], tz) if c == "ts" else r[c] for c in cols] for r in records],
                    fmt, tz)
        return 0
    print(f"why {args.actuator}: last {len(records)} command(s), newest first (times {settings.kaiser.tz})")
    for r in records:
        dur = f" for {r['duration']:.0f} s" if r["duration"] else ""
        who = f"rule {r['rule']}" if r["rule"] else r["source"]
        print(f"{output.when(r['ts'], tz)}  {str(r['outcome']).upper():7s} {_state_text(r['value'])}{dur}  "
              f"by {who} (config {r['config_version']})")
        if r["reason"]:
            print(f"    because: {r['reason']}")
        if r["trigger"]:
            print(f"    trigger: {r['trigger']}")
        if r["outcome"] == "blocked":
            print(f"    guard: {r['code']}: {r['block_reason']}")
        else:
            print(f"    firmware: {r['firmware'] or 'no response recorded'}")
    if status.rows:
        ts, state, value, emergency = status.rows[0]
        print(f"now reported: {'on' if state else 'off'} ({value:.2f}), emergency {emergency}")
    for ts, kind, message in evs.rows:
        print(f"event {output.when(ts, tz)} {kind}: {message}")
    for ts, kind, message in board.rows:
        print(f"board {output.when(ts, tz)} {kind}: {message}")
    return 0


def cmd_command(args: argparse.Namespace) -> int:
    """``kaiser command ACTUATOR STATE [--for D]``: a manual command through the
    running server's guard (a block exits 1 with the guard's code)."""
    msg: dict[str, Any] = {"type": "command", "actuator": args.actuator, "set": args.state}
    if args.for_:
        msg["for"] = args.for_
    if args.reason:
        msg["reason"] = args.reason
    if args.priority is not None:
        msg["priority"] = args.priority
    return _control_cli(args, msg)


def cmd_plan(args: argparse.Namespace) -> int:
    """``kaiser plan [PATH] [--since 24h] [--rev REF] [--history FILE]``: replay stored
    readings through the rules at PATH (or at git revision REF) on a virtual clock;
    print the commands that would differ from what was sent. Lease renewals and the
    OFFs of emergency stops are not compared. ``--history``: the readings and
    commands of a file ``kaiser export-history`` wrote, instead of the store."""
    from engine.pipeline import Kaiser

    settings = _settings(args)
    if settings is None:
        return 2
    rev, history_file = getattr(args, "rev", None), getattr(args, "history", None)
    with tempfile.TemporaryDirectory(prefix="kaiser-plan-") as tmp:
        if rev:
            try:
                rules, label = _rules_at(settings, rev, getattr(args, "path", None), Path(tmp))
            except GitError as exc:
                print(f"kaiser: --rev {rev}: {exc}", file=sys.stderr)
                return 1
        else:
            rules = Path(args.path) if args.path else settings.kaiser.rules
            label = str(rules)
        deployment, diagnostics, version = load_rules(rules, settings.kaiser.tz)
    errors = _errors(diagnostics)
    if errors:
        print(render(errors), file=sys.stderr)
        return 1
    try:
        if history_file:
            hist = history.read(Path(history_file))
        else:
            hist = history.from_store(lambda sql: run_query(settings, sql), _since(args.since),
                                      source=f"the store, last {args.since}")
    except (StoreError, KaiserError, ValueError) as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    stored = hist.readings
    # boards count as online: the replay is about what the rules decide, not who was reachable
    kaiser = Kaiser(deployment, assume_online=True, start=stored[0].ts if stored else hist.since)
    planned = replay(kaiser, stored, until=hist.until)
    actual = [(c.ts, c.actuator, c.value) for c in hist.sent if not history.is_routine(c.source, c.reason, c.value)]
    only_new, only_old = diff_commands(planned, actual)
    print(f"plan: rules {label} (version {version.id}) over {len(stored)} readings from {hist.source}")
    if not only_new and not only_old:
        print(f"no difference: {len(planned)} command(s), the same as were sent")
        return 0
    for t, a, v in only_new:
        print(f"+ {time.strftime('%m-%d %H:%M:%S', time.localtime(t))} {a} {_state_text(v)}  (would be sent)")
    for t, a, v in only_old:
        print(f"- {time.strftime('%m-%d %H:%M:%S', time.localtime(t))} {a} {_state_text(v)}  (was sent, would not be)")
    print(f"{len(only_new)} new, {len(only_old)} gone")
    return 0


def _rules_at(settings: Settings, rev: str, path: str | None, into: Path) -> tuple[Path, str]:
    """The rules folder at git revision ``rev``, written below ``into``: from the
    repository PATH is in when given, else from pull mode's clone when there is one,
    else from the repository of ``[kaiser] rules``. -> (folder, label). Raises GitError."""
    from engine.adapters import git
    from engine.puller import state_dir

    clone = state_dir(settings.store.path, settings.kaiser.id) / "repo.git"
    if path is None and settings.gitops.enabled and (clone / "HEAD").exists():
        sha = git.resolve(rev, git_dir=clone)
        rules = git.export(sha, settings.gitops.path, into / sha[:12], git_dir=clone)
    else:
        top, prefix = git.repo_of(Path(path) if path else settings.kaiser.rules)
        sha = git.resolve(rev, cwd=top)
        rules = git.export(sha, prefix, into / sha[:12], cwd=top)
    if not rules.exists():
        raise git.GitError(f"commit {sha[:12]} has no {rules.relative_to(into / sha[:12])}")
    return rules, f"{rev} ({sha[:12]})"


def replay(kaiser: Any, readings: list[Reading], until: float | None = None) -> list[tuple[float, str, float]]:
    """Feed stored readings through a fresh Kaiser on a virtual clock: the clock stops
    at every due instant, so timers fire on time; then runs on to ``until``. Returns
    the commands it would send as (ts, actuator, value), lease renewals and
    emergency OFFs left out (engine.history.is_routine)."""
    out: list[tuple[float, str, float]] = []
    t_now = readings[0].ts if readings else 0.0

    def collect(o: Outputs) -> None:
        out.extend((t_now, a.command.actuator, a.command.value) for a in o.sent
                   if not history.is_routine(a.command.source, a.command.reason, a.command.value))

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


def cmd_export_history(args: argparse.Namespace) -> int:
    """``kaiser export-history [--since 7d] FILE.parquet``: the readings and commands of
    the store over the last D, as a file ``kaiser plan --history`` replays (CI)."""
    settings = _settings(args)
    if settings is None:
        return 2
    since = _since_arg(args)
    if since is None:
        return 2
    until = time.time()
    try:
        hist = history.from_store(lambda sql: run_query(settings, sql), since, until,
                                  source=f"kaiser {settings.kaiser.id}, last {args.since}")
        history.write(hist, Path(args.file), {"kaiser.id": settings.kaiser.id})
    except (StoreError, KaiserError) as exc:
        print(f"kaiser: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: {len(hist.readings)} readings and {len(hist.commands)} commands "
          f"({len(hist.sent)} sent) over the last {args.since}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """``kaiser sync``: pull mode fetches now; prints what became of the branch head
    (exit 1 when it was refused or the fetch failed)."""
    return _control_cli(args, {"type": "sync"})


def _health(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """The running server's ``GET /health``. Raises OSError or ValueError."""
    w = settings.websocket
    host = w.host if w.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    with urllib.request.urlopen(f"http://{host}:{w.port}/health", timeout=timeout) as r:
        data = json.loads(r.read())
    if not isinstance(data, dict):
        raise ValueError("/health did not answer a JSON object")
    return data


def cmd_status(args: argparse.Namespace) -> int:
    """``kaiser status [--format table|json]``: version and commit that run, the last
    reload or refused commit, pull mode, boards and emergency latches, from the
    running server's /health."""
    settings = _settings(args)
    if settings is None:
        return 2
    try:
        health = _health(settings)
    except (OSError, ValueError) as exc:
        w = settings.websocket
        print(f"kaiser: no server answers on {w.host}:{w.port}: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "format", "table") == "json":
        print(json.dumps(health, indent=2, default=str))
        return 0
    for line in status_lines(health, settings.kaiser.tz, time.time()):
        print(line)
    return 0


def status_lines(h: dict[str, Any], tz: str, now: float) -> list[str]:
    """``kaiser status`` for people, from a /health answer (times in ``tz``)."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)

    def when(ts: object) -> str:
        if not isinstance(ts, int | float) or not ts:
            return "never"
        t = dt.datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M:%S")
        return f"{t} ({_ago(now - ts)} ago)"

    mqtt, store = h.get("mqtt") or {}, h.get("store") or {}
    out = [f"kaiser {h.get('version', '?')} ({h.get('kaiser_id')}): {h.get('status')}, "
           f"up {_ago(float(h.get('uptime_s') or 0))}; MQTT {'connected' if mqtt.get('connected') else 'NOT connected'}"
           f" ({mqtt.get('url')}); store {'ok' if store.get('ok') else 'FAILING: ' + str(store.get('last_error'))}"]
    commit = h.get("git_commit")
    out.append(f"rules:       version {h.get('rules_version')}"
               + (f", commit {str(commit)[:12]}" if commit else ", not from git") + f" ({h.get('rules_dir')})")
    last = h.get("last_reload") or {}
    if last:
        what = "loaded" if last.get("ok") else "REFUSED"
        out.append(f"last reload: {what} version {last.get('version')} at {when(last.get('at'))}"
                   + (f", commit {last['commit']}" if last.get("commit") else ""))
        out.extend(f"               {e}" for e in (last.get("errors") or [])[:10])
    g = h.get("gitops")
    if g:
        run = g.get("running") or {}
        out.append(f"pull mode:   {g.get('repo')} branch {g.get('branch')} folder {g.get('path')}, "
                   f"every {g.get('interval_s'):g} s" + ("" if g.get("require_tests") else ", tests not required"))
        out.append("  running:   " + (f"{run.get('short')} by {run.get('author')}: {run.get('subject')} "
                                      f"(since {when(g.get('running_since'))})" if run else "the local rules folder"))
        out.append(f"  fetched:   {when(g.get('last_fetch'))}, head {str(g.get('head') or '?')[:12]}")
        if g.get("last_error"):
            out.append(f"  FAILING:   {g.get('failures')} fetch(es) in a row: {g.get('last_error')} "
                       f"(next try in {g.get('next_fetch_in_s')} s)")
        r = g.get("last_refused")
        if r:
            c = r.get("commit") or {}
            out.append(f"  refused:   {r.get('short')} by {c.get('author')}: {c.get('subject')} at {when(r.get('at'))}"
                       f" ({r.get('gate')}: {r.get('summary')})")
            out.extend(f"               {f}" for f in (r.get("findings") or [])[:10])
    devices = h.get("devices") or {}
    boards = h.get("boards") or {}
    listed = ", ".join(f"{d} {s}" for d, s in sorted(devices.items())) or "none heard yet"
    out.append(f"boards:      {listed}" + (f"; {boards.get('unknown')} unknown" if boards.get("unknown") else ""))
    latches = h.get("latches") or []
    if not latches:
        out.append("latches:     no emergency stop")
    for x in latches:
        out.append(f"latches:     EMERGENCY STOP {x.get('target')} by {x.get('who') or '?'} since "
                   f"{when(x.get('since'))}: {x.get('reason')}")
    return out


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d"


__all__ = [
    "Server",
    "cmd_command",
    "cmd_estop",
    "cmd_export_history",
    "cmd_history",
    "cmd_plan",
    "cmd_query",
    "cmd_reset",
    "cmd_run",
    "cmd_status",
    "cmd_sync",
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
