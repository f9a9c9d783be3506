"""``GET /metrics``: Prometheus text exposition, labelled per device, actuator,
rule, sensor and guard code (SPEC section 5; docs/operations.md lists every series).

Two halves, so the hot path stays cheap:

- :class:`Telemetry` is what the server counts while it handles messages: plain
  dicts and ints (a dict increment or assignment per command, rule run or reading,
  a bisect per histogram observation: well under a microsecond each).
- :func:`render` builds the text at scrape time from the telemetry and from the
  state the server keeps anyway (device tracker, guard latches, reported actuator
  states, last reload).

Nothing here imports the server or talks to the network.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.model import Reading

if TYPE_CHECKING:
    from engine.app import Server

#: seconds: from a few microseconds (decode + rules in-process) to seconds (a stalled loop)
INGEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
#: seconds from a reading's arrival to the command it caused leaving for the broker
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: the quality grades a reading can carry (sensors/common.py), as a state set
QUALITIES = ("excellent", "good", "fair", "poor", "bad", "stale", "error")


class Histogram:
    """A Prometheus histogram without labels: ``observe(seconds)`` is a bisect and
    two additions."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (the bucket it falls in); None when empty."""
        if not self.count:
            return None
        rank, seen = q * self.count, 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return math.inf


@dataclass(slots=True)
class Telemetry:
    """What the server counts per message for ``/metrics`` and the REST views."""

    #: sensor ref -> its newest reading (retained ones too: they are the latest known)
    latest: dict[str, Reading] = field(default_factory=dict)
    #: (actuator, outcome "sent"|"blocked", guard code or "") -> count
    commands: dict[tuple[str, str, str], int] = field(default_factory=dict)
    #: (rule, outcome without its detail: "ran", "released", "error" ...) -> count
    rule_runs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: rule -> (time of its last run, outcome)
    last_run: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: seconds to handle one MQTT message (decode, route, store append, rules, guard, publish)
    ingest: Histogram = field(default_factory=lambda: Histogram(INGEST_BUCKETS))
    #: seconds from a message's arrival to each command it caused being published
    reading_to_command: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    #: reloads that replaced the running version / were refused
    reload_ok_total: int = 0
    reload_refused_total: int = 0

    def command(self, actuator: str, outcome: str, code: str = "") -> None:
        key = (actuator, outcome, code)
        self.commands[key] = self.commands.get(key, 0) + 1

    def rule_run(self, rule: str, outcome: str, ts: float) -> None:
        kind = outcome.split(":", 1)[0] if ":" in outcome else outcome  # "error: ..." -> "error"
        key = (rule, kind)
        self.rule_runs[key] = self.rule_runs.get(key, 0) + 1
        self.last_run[rule] = (ts, kind)


# --------------------------------------------------------------------------
# exposition


def escape(value: object) -> str:
    """A label value as the text format wants it (backslash, quote, newline escaped)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class Exposition:
    """Collects metric families and writes the text format (version 0.0.4)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, object], float]]) -> None:
        """``samples``: (labels, value) pairs. A family without samples is still
        declared, so dashboards and alerts see that the server exports it."""
        self.lines.append(f"# HELP kaiser_{name} {help_}")
        self.lines.append(f"# TYPE kaiser_{name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
                self.lines.append(f"kaiser_{name}{{{text}}} {_num(value)}")
            else:
                self.lines.append(f"kaiser_{name} {_num(value)}")

    def one(self, name: str, value: float, help_: str, kind: str = "counter") -> None:
        self.family(name, kind, help_, [({}, value)])

    def histogram(self, name: str, h: Histogram, help_: str) -> None:
        self.lines.append(f"# HELP kaiser_{name} {help_}")
        self.lines.append(f"# TYPE kaiser_{name} histogram")
        seen = 0
        for bound, n in zip(h.bounds, h.counts, strict=False):
            seen += n
            self.lines.append(f'kaiser_{name}_bucket{{le="{_num(bound)}"}} {seen}')
        self.lines.append(f'kaiser_{name}_bucket{{le="+Inf"}} {h.count}')
        self.lines.append(f"kaiser_{name}_sum {_num(h.sum)}")
        self.lines.append(f"kaiser_{name}_count {h.count}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(server: Server) -> str:
    """The whole ``/metrics`` answer for a running server."""
    x = Exposition()
    m, t = server.metrics, server.telemetry
    # the unlabelled totals (bench, tests and existing dashboards read these)
    x.one("mqtt_messages_total", m.messages, "MQTT messages received")
    x.one("readings_total", m.readings, "sensor readings routed to the rules")
    x.one("malformed_total", m.malformed, "malformed MQTT payloads")
    x.one("unmapped_total", m.unmapped, "readings the device map does not place")
    x.one("commands_sent_total", m.commands_sent, "commands the guard allowed and published")
    x.one("commands_blocked_total", m.commands_blocked, "commands the guard blocked")
    x.one("events_total", m.events, "events recorded")
    x.one("notifications_total", m.notifications, "notifications sent by rules")
    x.one("heartbeats_total", m.heartbeats, "heartbeats answered")
    x.one("reloads_total", m.reloads, "successful reloads")
    x.one("reload_failures_total", m.reload_failures, "refused reloads")
    x.one("handler_errors_total", m.handler_errors, "internal errors while handling input")
    x.one("mqtt_connected", int(server.mqtt_up()),
          "1 when every connection to the broker is up (the main one and its publish lanes)", "gauge")
    lanes, lanes_up = server.mqtt_lanes()
    x.one("mqtt_lanes_down", lanes - lanes_up,
          "publish lanes open but not connected: the commands of their boards wait", "gauge")
    x.one("devices_online", sum(1 for v in server.online.values() if v), "boards online", "gauge")

    # per device
    deployment, tracker = server.deployment, server.tracker
    devices = list(deployment.devices.values()) if deployment is not None else []
    boards = tracker.boards if tracker is not None else {}
    x.family("device_online", "gauge", "1 while the board is online (heartbeat or data within offline_after)",
             [({"device": d.name, "esp_id": d.esp_id}, int(bool(server.online.get(d.esp_id)))) for d in devices])
    seen = []
    registered = []
    for d in devices:
        b = boards.get(d.esp_id)
        if b is not None and b.last_seen:
            seen.append(({"device": d.name, "esp_id": d.esp_id}, b.last_seen))
        registered.append(({"device": d.name, "esp_id": d.esp_id}, int(bool(b is not None and b.acked))))
    x.family("device_last_seen_timestamp_seconds", "gauge", "when the board was last heard (Unix seconds)", seen)
    x.family("device_registered", "gauge", "1 when the board acknowledged a heartbeat this session", registered)
    if tracker is not None:
        x.one("unknown_devices", len(tracker.unknown), "boards heard that the device map lacks", "gauge")
        x.one("unknown_devices_evicted_total", tracker.unknown_evicted,
              "unknown boards forgotten to keep the list bounded")

    # per actuator
    actuators = [a for d in devices for a in d.actuators]
    x.family("actuator_value", "gauge", "state the board last reported, duty 0.0-1.0 (1 = on)",
             [({"actuator": a.ref}, server.reported[a.ref]) for a in actuators if a.ref in server.reported])
    x.family("actuator_commanded_value", "gauge", "last value the guard allowed and Kaiser sent, duty 0.0-1.0",
             [({"actuator": a.ref}, server.last_sent[a.ref].value) for a in actuators if a.ref in server.last_sent])
    x.family("commands_total", "counter", "commands by actuator and outcome (sent, blocked) with the guard's code",
             [({"actuator": a, "outcome": o, "code": c}, n) for (a, o, c), n in sorted(t.commands.items())])

    # per rule
    x.family("rule_runs_total", "counter", "rule runs by rule and outcome (ran, released, skipped_cooldown, ...)",
             [({"rule": r, "outcome": o}, n) for (r, o), n in sorted(t.rule_runs.items())])
    x.family("rule_last_run_timestamp_seconds", "gauge", "when the rule last ran (Unix seconds)",
             [({"rule": r}, ts) for r, (ts, _) in sorted(t.last_run.items())])

    # per sensor
    latest = sorted(t.latest.items())
    x.family("sensor_value", "gauge", "newest reading of the sensor, in its unit",
             [({"sensor": ref, "unit": r.unit}, r.value) for ref, r in latest])
    x.family("sensor_quality", "gauge", "quality of the newest reading: 1 for its grade, 0 for the others",
             [({"sensor": ref, "quality": q}, int(r.quality == q)) for ref, r in latest for q in QUALITIES])
    x.family("sensor_last_reading_timestamp_seconds", "gauge", "when the newest reading was taken (Unix seconds)",
             [({"sensor": ref}, r.ts) for ref, r in latest])

    # emergency stops: one series per scope, 0 when none is latched
    latched = {x_.target for x_ in (server.kaiser.guard.latches() if server.kaiser is not None else ())}
    scopes = ["all", *(d.name for d in devices)]
    x.family("emergency_stop_active", "gauge", "1 while a latched emergency stop covers this scope (all or a device)",
             [({"scope": s}, int(s in latched)) for s in scopes])

    # configuration
    last = server.last_reload or {}
    x.one("config_reload_success", int(bool(last.get("ok", True))),
          "1 when the last reload (or the start) loaded its version; 0 when it was refused", "gauge")
    if last.get("at"):
        x.one("config_reload_timestamp_seconds", float(last["at"]), "when the last reload was tried", "gauge")
    v = server.version
    x.family("config_version_info", "gauge", "the rules version that runs (short hash) and its git commit",
             [({"version": v.id, "git_commit": v.git_commit or ""}, 1)] if v is not None else [])

    # latency
    x.histogram("ingest_seconds", t.ingest, "seconds to handle one MQTT message (decode, route, rules, guard)")
    x.histogram("reading_to_command_seconds", t.reading_to_command,
                "seconds from a message's arrival to a command it caused being published")

    if server.store is not None:
        x.one("store_rows_written_total", server.store.rows_written, "rows written to DuckDB")
        x.one("store_pending_rows", server.store.pending(), "rows waiting for the next flush", "gauge")
        x.one("store_ok", int(not server.store.failing), "0 while the last store flush failed", "gauge")
        restarts = getattr(server.store, "restarts", None)  # the store's own process ([store] writer)
        if restarts is not None:
            x.one("store_process_restarts_total", restarts, "times the store's process died and was started again")
    if server.hub is not None:
        x.one("websocket_clients", len(server.hub.clients), "connected WebSocket clients", "gauge")
        x.one("websocket_slow_dropped_total", server.hub.slow_dropped, "slow clients dropped")
    x.one("uptime_seconds", round(server.clock.monotonic() - server._started_at, 1), "seconds since start", "gauge")
    text = x.text()
    if server.gitops is not None:
        text += "\n".join(server.gitops.metrics()) + "\n"
    return text


def summary(server: Server) -> dict[str, Any]:
    """The latency histograms' medians and 99th percentiles (upper bucket bounds), for /health."""
    t = server.telemetry
    return {"ingest_p50_s": t.ingest.quantile(0.5), "ingest_p99_s": t.ingest.quantile(0.99),
            "reading_to_command_p50_s": t.reading_to_command.quantile(0.5),
            "reading_to_command_p99_s": t.reading_to_command.quantile(0.99)}
