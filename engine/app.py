"""``kaiser run`` and friends: wire codec, routing, the pure pipeline and the guard to
MQTT, DuckDB and WebSocket (SPEC sections 1, 4, 5, 6; PROTOCOL.md).

The ``Server`` owns one event loop's worth of state. Every input (an MQTT message,
a timer, a WebSocket control message, a reload) becomes one synchronous call into
``engine.pipeline.Kaiser`` and its ``Outputs`` are handed to ``_apply``: publish the
commands the guard allowed, append everything to the store, fan out to WebSocket.
Nothing here decides what an actuator does.

CLI entry points (engine/cli.py maps them): cmd_run, cmd_estop, cmd_reset, cmd_why,
cmd_history, cmd_query, cmd_plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import __version__, codec
from engine.adapters.mqtt import MqttLink
from engine.adapters.mqtt5link import Mqtt5Link, NoMqtt5, choose
from engine.adapters.store import Store
from engine.adapters.storeproc import StoreClient
from engine.adapters.ws import ControlRefused, Hub
from engine.clock import Clock, SystemClock
from engine.config.settings import Settings
from engine.devices import DeviceTracker, Reply, tokens_from_env
from engine.diagnostics import Diagnostic
from engine.errors import ConfigError, KaiserError, StoreError
from engine.gitops import Commit, Refusal, refusal_json
from engine.metrics import Telemetry
from engine.metrics import render as render_metrics
from engine.metrics import summary as latency_summary
from engine.model import (
    Allowed,
    Blocked,
    Command,
    Deployment,
    Device,
    Event,
    Outputs,
    Reading,
)
from engine.puller import Puller, state_dir
from engine.routing import Router, Unmapped
from engine.units import parse_duration

log = logging.getLogger("kaiser")
#: one line per command sent or blocked (its own logger: ``KAISER_LOG`` or a handler can quiet it)
log_commands = logging.getLogger("kaiser.commands")
BLOCK_LOG_EVERY = 60.0  # seconds: the same block (actuator, code, rule) is logged once, then counted

STATE_KEY = "pipeline"
DEVICES_KEY = "devices"  # what each board was sent (removals survive a restart)
MALFORMED_LOG_EVERY = 60.0  # seconds: one log line per board and topic
MAX_IDLE = 1.0  # seconds: the pipeline is ticked at least this often, even with nothing due


# --------------------------------------------------------------------------
# config versions


@dataclass(frozen=True, slots=True)
class Version:
    """One loaded document set: ``id`` is the short hash shown everywhere."""

    id: str
    hash: str
    git_commit: str | None
    files: tuple[str, ...]


def _rules_files(rules_dir: Path) -> list[Path]:
    if rules_dir.is_file():
        return [rules_dir]
    return sorted(p for p in rules_dir.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def version_of(rules_dir: Path) -> Version:
    """Hash of every YAML file's relative path and bytes, plus the git commit when
    the rules dir is inside a git checkout."""
    h = hashlib.sha256()
    files = _rules_files(rules_dir)
    base = rules_dir if rules_dir.is_dir() else rules_dir.parent
    for p in files:
        h.update(str(p.relative_to(base)).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(p.read_bytes())
        h.update(b"\0")
    digest = h.hexdigest()
    commit = None
    try:
        r = subprocess.run(
            ["git", "-C", str(base), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        if r.returncode == 0:
            commit = r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return Version(digest[:12], digest, commit, tuple(str(p) for p in files))


def load_rules(rules_dir: Path, tz: str) -> tuple[Deployment, list[Diagnostic], Version]:
    """Load and check a document set; the caller refuses it when any finding is an error."""
    from engine.config.lint import lint  # loader + every semantic check, as `kaiser lint`

    version = version_of(rules_dir)
    deployment, diagnostics = lint(rules_dir, tz)
    return deployment, diagnostics, version


def _errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.is_error]


# --------------------------------------------------------------------------
# the server


@dataclass(slots=True)
class Sent:
    """The last command sent to an actuator, to compare firmware answers with."""

    value: float
    ts: float
    responded: bool = False
    by: str = ""  # the rule, or the source ("manual (by local (alice))", "safety", ...)


@dataclass(slots=True)
class Metrics:
    readings: int = 0
    messages: int = 0
    malformed: int = 0
    unmapped: int = 0
    commands_sent: int = 0
    commands_blocked: int = 0
    rule_runs: int = 0
    events: int = 0
    notifications: int = 0
    heartbeats: int = 0
    reloads: int = 0
    reload_failures: int = 0
    handler_errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def parse_set(value: object) -> tuple[float, bool]:
    """A manual ``set``: on/off/toggle or a duty 0.0-1.0 -> (value, toggle). Raises ValueError."""
    if isinstance(value, bool):
        return (1.0 if value else 0.0), False
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "on":
            return 1.0, False
        if v == "off":
            return 0.0, False
        if v == "toggle":
            return 0.0, True
        try:
            value = float(v)
        except ValueError:
            raise ValueError(f"set must be on, off, toggle or a number 0.0-1.0, got {value!r}") from None
    if isinstance(value, int | float) and 0.0 <= float(value) <= 1.0:
        return float(value), False
    raise ValueError(f"set must be on, off, toggle or a number 0.0-1.0, got {value!r}")


class Server:
    """The running Kaiser: ``await start()``, ``await stop()``; or ``await run(stop_event)``.

    ``mqtt_url`` overrides the settings (the demo's embedded broker); ``ws_listen``
    overrides the WebSocket listen address ("127.0.0.1:0" picks a free port);
    ``websocket=False`` runs without the WebSocket port; ``watch=False`` without the
    file watcher.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        mqtt_url: str | None = None,
        ws_listen: str | None = None,
        websocket: bool = True,
        watch: bool = True,
        rules_dir: Path | None = None,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.kaiser_id = settings.kaiser.id
        self.rules_dir = Path(rules_dir or settings.kaiser.rules)
        self.tz = settings.kaiser.tz
        self.mqtt_url = mqtt_url or settings.mqtt.url
        self.ws_enabled = websocket
        self.ws_listen = ws_listen or settings.websocket.listen
        self.watch_enabled = watch
        self.client_id = client_id or settings.mqtt.client_id
        self.metrics = Metrics()
        self.telemetry = Telemetry()  # labelled counters, latest readings, latency (engine/metrics.py)
        self._t_in: float | None = None  # perf_counter when the MQTT message being handled arrived
        self._block_logged: dict[tuple[str, str, str], tuple[float, int]] = {}
        self.tracker: DeviceTracker | None = None  # acks, config, stops: engine/devices.py
        self.online: dict[str, bool] = {}  # esp id -> online, as the pipeline decides
        self.last_sent: dict[str, Sent] = {}
        self.reported: dict[str, float] = {}  # actuator ref -> last state the board reported
        self._malformed_logged: dict[tuple[str, str], float] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._wake_at: float | None = None  # when the timer loop wakes next (None: it is running)
        self._started_at = self.clock.monotonic()
        self._stopping = False
        self._last_snapshot = 0.0
        self._reload_lock = asyncio.Lock()
        self.version: Version | None = None
        self.deployment: Deployment | None = None
        self.router: Router | None = None
        self.kaiser: Any = None
        self.store: Store | StoreClient | None = None
        self.mqtt: MqttLink | Mqtt5Link | None = None
        self.mqtt_client = ""
        self.ingest: Any = None  # engine.adapters.ingest.Ingest with KAISER_INGEST=process
        self.hub: Hub | None = None
        self.broker: Any = None
        self._esp_to_device: dict[str, Device] = {}
        self._encoded: dict[tuple[str, float, float | None, bool], tuple[str, int, Any]] = {}
        #: observers (the demo's live view): called with every step's Outputs / every reading
        self.output_taps: list[Callable[[Outputs, float], None]] = []
        self.reading_taps: list[Callable[[Reading], None]] = []
        #: the last version tried (start, reload, pull mode): for /health and `kaiser status`
        self.last_reload: dict[str, Any] | None = None
        #: pull mode (docs/gitops.md): the rules come from a git branch, not the watcher
        self.gitops: Puller | None = None
        if settings.gitops.enabled and rules_dir is None:
            self.gitops = Puller(self, settings.gitops, state_dir(settings.store.path, self.kaiser_id), self.clock.now)
            self.watch_enabled = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the rules (ConfigError when they have errors), open the store, restore
        state, connect MQTT, open the WebSocket port."""
        from engine.pipeline import Kaiser

        if self.gitops is not None:  # the commit that ran last, or the branch head
            self.rules_dir = await self.gitops.startup(self.rules_dir)
        s = self.settings.store
        # DuckDB in a process of its own by default (engine/adapters/storeproc.py: its
        # work on a thread of this process delayed the readings); that process starts
        # now and opens the file while the rules load
        remote = StoreClient(s.path, s.flush_interval, s.retention, now=self.clock.now,
                             memory_limit=s.memory_limit, wait=False) if s.writer == "process" else None
        try:
            deployment, diagnostics, version = load_rules(self.rules_dir, self.tz)
            errors = _errors(diagnostics)
            if errors:
                raise ConfigError(f"{len(errors)} error(s) in {self.rules_dir}", diagnostics)
        except BaseException:
            if remote is not None:
                remote.close()
            raise
        for d in diagnostics:
            log.warning("%s", d.text())
        self.store = remote if remote is not None else Store(
            s.path, s.flush_interval, s.retention, now=self.clock.now, memory_limit=s.memory_limit)
        self.store.start()
        self.kaiser = Kaiser(deployment)
        self._install(deployment, version)
        self._restore()
        now = self.clock.now()
        self._record_version(version, ok=True, now=now, commit=self.gitops.state.running if self.gitops else None)
        await self._start_mqtt()
        if self.ws_enabled:
            from engine import auth
            from engine.adapters.rest import RestApi

            w = self.settings.websocket
            keys = auth.configured_keys(w.token_env, w.tokens_env)  # ConfigError when malformed
            self.hub = Hub(
                self.ws_listen,
                keys=keys,
                max_clients=w.max_clients,
                on_control=self._control,
                health=self.health,
                metrics=self.prometheus,
                query=self.store.query_pool(w.query_timeout, w.query_workers),
                query_timeout=w.query_timeout,
                now=self.clock.now,
                http=RestApi(self, query_timeout=w.query_timeout).handle,  # /api/v1/ and the status page
            )
            await self.hub.start()
            if keys is None:  # control always needs a key: a new one, in the token file
                self.hub.keys = auth.local_key(auth.token_path(self.settings.store.path, self.hub.port))
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="kaiser-timers"))
        if self.gitops is not None:  # cancelled in stop() with the other tasks (git is killed)
            self._tasks.append(asyncio.create_task(self.gitops.run(), name="kaiser-gitops"))
        _tune_gc()
        if self.watch_enabled and self.rules_dir.exists():
            from engine.adapters.watch import watch_rules

            self._tasks.append(asyncio.create_task(watch_rules(self.rules_dir, self._on_files_changed)))
        log.info("kaiser %s running: rules %s (version %s), %d devices, %d rules",
                 self.kaiser_id, self.rules_dir, version.id, len(deployment.devices), len(deployment.rules))

    async def _start_mqtt(self) -> None:
        url = self.mqtt_url
        if url == "embedded":
            from engine.adapters.broker import EmbeddedBroker

            self.broker = EmbeddedBroker()
            await self.broker.start()
            url = self.broker.url
        now = self.clock.now()
        # which client reads the broker (engine/adapters/mqtt5link.py, docs/performance.md):
        # MQTT 5 on the mqtt5 codec in this process by default (TLS too); aiomqtt for the
        # embedded broker (MQTT 3.1.1 only); the ingest reader process with client
        # "process", this process then only publishing (on the mqtt5 codec too)
        configured = self.settings.mqtt.client
        self.mqtt_client = client = "aiomqtt" if self.broker is not None else mqtt_client(url, configured)
        subs = codec.subscriptions(self.kaiser_id)
        will = codec.encode_server_status(self.kaiser_id, online=False, timestamp=now)

        def online() -> list[codec.Outgoing]:
            return [codec.encode_server_status(self.kaiser_id, online=True, timestamp=self.clock.now())]

        if client in ("mqtt5", "process"):
            reads = client == "mqtt5"
            self.mqtt = Mqtt5Link(url, self.client_id, subs if reads else [], self.on_ingest, will=will,
                                  on_connect=online, on_state=self._on_mqtt_state,
                                  username=self.settings.mqtt.username, password=self.settings.mqtt.password,
                                  fallback=not reads or mqtt_client_mode(configured) == "auto",
                                  lanes=self.settings.mqtt.lanes, unsubscribe=() if reads else subs)
        else:
            self.mqtt = self._aiomqtt_link(url, subs, will, online, ingest=False)
        self._tasks.append(asyncio.create_task(self._run_mqtt(url, subs, will, online), name="kaiser-mqtt"))
        deadline = time.monotonic() + 10  # the link may change to aiomqtt meanwhile (_run_mqtt)
        while time.monotonic() < deadline and not await self.mqtt.wait_connected(0.25):
            pass
        if client == "process" and isinstance(self.mqtt, Mqtt5Link):
            # the reader speaks MQTT 5 only: started once this link found the broker
            # speaks it (or, broker not reachable yet, at once; _run_mqtt stops it if not)
            from engine.adapters.ingest import Ingest
            from engine.adapters.mqtt import parse_url

            self.ingest = Ingest(*parse_url(url), f"{self.client_id}-ingest", subs, self.on_ingest,
                                 username=self.settings.mqtt.username, password=self.settings.mqtt.password)
            self._tasks.append(asyncio.create_task(self.ingest.run(), name="kaiser-ingest"))
        if not self.mqtt.connected:
            log.warning("MQTT broker %s not reachable yet; retrying in the background", url)
        elif isinstance(self.mqtt, Mqtt5Link) and not await self.mqtt.wait_lanes(5):
            log.warning("MQTT publish lanes to %s not all connected yet; retrying in the background", url)
        elif self.ingest is not None and not await self.ingest.wait_connected(10):
            log.warning("the ingest reader is not connected to %s yet; retrying in the background", url)

    def _aiomqtt_link(self, url: str, subs: list[str], will: codec.Outgoing,
                      online: Callable[[], list[codec.Outgoing]], ingest: bool) -> MqttLink:
        return MqttLink(url, self.client_id, [] if ingest else subs, self.on_mqtt,
                        unsubscribe=subs if ingest else (), will=will, on_connect=online,
                        on_state=self._on_mqtt_state, username=self.settings.mqtt.username,
                        password=self.settings.mqtt.password)

    async def _run_mqtt(self, url: str, subs: list[str], will: codec.Outgoing,
                        online: Callable[[], list[codec.Outgoing]]) -> None:
        """Run the link; a broker without MQTT 5 gets aiomqtt instead (client ``auto``)."""
        assert self.mqtt is not None
        try:
            await self.mqtt.run()
        except NoMqtt5 as exc:
            assert isinstance(self.mqtt, Mqtt5Link)
            log.warning("%s: using aiomqtt (MQTT 3.1.1) instead", exc)
            pending = self.mqtt.pending()
            if self.ingest is not None:  # the reader process speaks MQTT 5 only: aiomqtt reads too
                log.warning("the ingest reader needs MQTT 5: aiomqtt reads instead")
                ingest, self.ingest = self.ingest, None
                await ingest.close()
            self.mqtt = link = self._aiomqtt_link(url, subs, will, online, ingest=False)
            self.mqtt_client = "aiomqtt"
            for m in pending:
                link.publish(m)
            await link.run()

    async def stop(self) -> None:
        """Clean shutdown: status offline published, snapshot saved, store flushed."""
        if self._stopping:
            return
        self._stopping = True
        now = self.clock.now()
        if self.mqtt is not None:
            try:
                await self.mqtt.close([codec.encode_server_status(
                    self.kaiser_id, online=False, timestamp=now, reason="graceful_shutdown")])
            except Exception as exc:  # shutting down anyway: flush the store regardless
                log.warning("MQTT shutdown: %s", exc)
        if self.ingest is not None:
            await self.ingest.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.hub is not None:
            await self.hub.stop()
        if self.store is not None:
            self._save_snapshot(immediate=False)
            await asyncio.to_thread(self.store.close)
        if self.broker is not None:
            await self.broker.stop()
        log.info("kaiser %s stopped", self.kaiser_id)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # ------------------------------------------------------------------ state
    def _install(self, deployment: Deployment, version: Version) -> None:
        self.deployment = deployment
        self.router = Router(deployment)
        self.version = version
        if self.kaiser is not None:  # one version id: rule runs carry the one config_versions names
            self.kaiser.engine.version = version.id
        self._esp_to_device = {d.esp_id: d for d in deployment.devices.values()}
        self._encoded = {}  # (actuator, value, duration, toggle) -> (esp, gpio, message)
        tokens, problems = tokens_from_env(deployment)
        for p in problems:
            log.warning("%s", p)
        now = self.clock.now()
        if self.tracker is None:
            self.tracker = DeviceTracker(self.kaiser_id, deployment, latched=self._emergency_active, tokens=tokens,
                                         max_unknown=self.settings.kaiser.max_unknown_devices)
        else:
            self.tracker.tokens = tokens
            self._send(self.tracker.install(deployment, now))
            self._send(self.tracker.tick(now))

    def _restore(self) -> None:
        assert self.store is not None and self.tracker is not None
        try:
            boards = self.store.get_state(DEVICES_KEY)
            if isinstance(boards, dict):
                self.tracker.restore(boards)
        except StoreError as exc:
            log.warning("cannot read what the boards were sent: %s", exc)
        try:
            snap = self.store.get_state(STATE_KEY)
        except StoreError as exc:
            log.warning("cannot read the saved state: %s", exc)
            snap = None
        if snap:
            try:
                self.kaiser.restore(snap)
                log.info("restored timers, latches, cooldowns, holds and emergency stops from the store")
                return
            except Exception as exc:
                log.warning("saved state not usable (%s); rebuilding from latest readings", exc)
        # no snapshot: the latest stored readings fill the state (snapshots fire no edges)
        now = self.clock.now()
        try:
            latest = self.store.latest_readings()
        except StoreError:
            latest = []
        for r in latest:
            with contextlib.suppress(Exception):
                self.kaiser.receive(r, now)

    def _save_snapshot(self, immediate: bool = False) -> None:
        if self.store is None or self.kaiser is None:
            return
        try:
            snap = self.kaiser.snapshot()
        except Exception:
            log.exception("pipeline snapshot failed")
            return
        self.store.put_state(STATE_KEY, snap, immediate=immediate)
        if self.tracker is not None:
            self.store.put_state(DEVICES_KEY, self.tracker.snapshot(), immediate=immediate)

    def _record_version(self, version: Version, ok: bool, now: float, errors: Iterable[str] = (), *,
                        rules_dir: Path | None = None, commit: Commit | None = None) -> None:
        assert self.store is not None
        errors = list(errors)
        sha = commit.sha if commit is not None else version.git_commit
        self.store.config_version(
            version.id, version.hash, sha, now, str(rules_dir or self.rules_dir), version.files, ok, errors,
            author=commit.author if commit else "", message=commit.message if commit else "",
        )
        self.last_reload = {"version": version.id, "git_commit": sha, "ok": ok, "at": now, "errors": errors[:20],
                            "commit": commit.describe() if commit else None}

    # ------------------------------------------------------------------ MQTT in
    def _on_mqtt_state(self, up: bool) -> None:
        now = self.clock.now()
        ev = Event(now, "mqtt", "info" if up else "warning", "", "MQTT connected" if up else "MQTT connection lost")
        self._event(ev)

    def on_mqtt(self, topic: str, payload: bytes, retained: bool) -> None:
        """Every MQTT message: decode, route, drive the pipeline. Never raises."""
        now = self.clock.now()
        self._t_in = t_in = time.perf_counter()
        self.metrics.messages += 1
        msg = codec.decode(topic, payload, retained=retained, received_at=now)
        try:
            if isinstance(msg, codec.SensorData):
                self._on_sensor_data(msg, now)
            elif isinstance(msg, codec.Rejection):
                self._on_malformed(msg, now)
            elif isinstance(msg, codec.Heartbeat):
                self._on_heartbeat(msg, now)
            elif isinstance(msg, codec.ActuatorStatus):
                self._on_actuator_status(msg, now)
            elif isinstance(msg, codec.ActuatorResponse):
                self._on_actuator_response(msg, now)
            elif isinstance(msg, codec.ActuatorAlert):
                self._on_alert(msg, now)
            elif isinstance(msg, codec.Will):
                self._on_will(msg, now)
            elif isinstance(msg, codec.ConfigResponse):
                self._on_config_response(msg, now)
            elif isinstance(msg, codec.Diagnostics):
                self._seen(msg.esp_id, now, retained)
            elif isinstance(msg, codec.SessionAnnounce):
                self._seen(msg.esp_id, now, msg.retained)
                if self.tracker is not None:
                    self.tracker.announce(msg, now)
            elif isinstance(msg, codec.ZoneAck):
                self._seen(msg.esp_id, now, retained)
                self._event(Event(now, "zone", "info", msg.esp_id, f"zone ack from {msg.esp_id}: {msg.status}"))
        except Exception as exc:  # a bug must not stop the server: record and go on
            self._handler_failed(topic, getattr(msg, "esp_id", "") or "", exc, now)
        self._t_in = None
        self.telemetry.ingest.observe(time.perf_counter() - t_in)
        self._check_due()
        if self.store is not None:
            self.store.pack()

    def on_ingest(self, items: list[tuple[Any, ...]]) -> None:
        """A batch from the ingest reader (engine/adapters/ingest.py), in the order the
        broker delivered it: readings it decoded, ``("r", topic, esp_id, retained,
        values)``, and every other message undecoded, ``("m", topic, payload,
        retained)``. ``values``: ``codec.SensorValue`` (the MQTT 5 link) or their
        fields as plain tuples (the reader process). Never raises."""
        sensor_value, make = codec.SensorValue, codec.SensorValue._make
        ingest_seconds = self.telemetry.ingest
        # Readings of one read from the broker land together (Kaiser.receive_many: one
        # rule evaluation for all, about a quarter less CPU a reading) in runs without
        # a repeated sensor, so every reading of a sensor is an edge of its own. At
        # light load a read holds one message and nothing changes.
        run: list[Reading] = []
        refs: set[str] = set()
        now, t0 = self.clock.now(), time.perf_counter()
        for item in items:
            if item[0] != "r":
                self._land(run, refs, now, t0)
                self.on_mqtt(item[1], item[2], item[3])
                continue
            now = self.clock.now()
            t_in = time.perf_counter()
            if not run:
                t0 = t_in
            self.metrics.messages += 1
            mark = len(run)
            values = item[4]
            if values and values[0].__class__ is not sensor_value:  # marshalled by the reader process
                values = [make(v) for v in values]
            try:
                self._on_values(item[2], values, item[3], now, land=run)
            except Exception as exc:  # as on_mqtt: record and go on
                self._handler_failed(item[1], item[2], exc, now)
                del run[mark:]
            if len(run) - mark == 1:  # one value a message: the hot path
                r = run[-1]
                if mark and (r.retained != run[0].retained or r.sensor in refs):
                    del run[mark:]
                    self._land(run, refs, now, t0)
                    run.append(r)
                    t0 = t_in
                refs.add(r.sensor)
            else:
                new = run[mark:]
                sensors = [r.sensor for r in new]
                if mark and new and (new[0].retained != run[0].retained or not refs.isdisjoint(sensors)):
                    del run[mark:]
                    self._land(run, refs, now, t0)
                    run.extend(new)
                    t0 = t_in
                refs.update(sensors)
            ingest_seconds.observe(time.perf_counter() - t_in)
        self._land(run, refs, now, t0)
        self._check_due()
        if self.store is not None:
            self.store.pack()

    def _land(self, run: list[Reading], refs: set[str], now: float, t_in: float) -> None:
        """Hand ``run`` (routed and stored already) to the pipeline; empties it."""
        if not run:
            return
        self._t_in = t_in
        try:
            out = self.kaiser.receive(run[0], now) if len(run) == 1 else self.kaiser.receive_many(run, now)
            if out:
                self._apply(out, now)
        except Exception as exc:  # as on_mqtt: record and go on
            self._handler_failed(f"{len(run)} reading(s) from the ingest reader", "", exc, now)
        self._t_in = None
        run.clear()
        refs.clear()

    def _handler_failed(self, topic: str, esp: str, exc: Exception, now: float) -> None:
        self.metrics.handler_errors += 1
        log.exception("handling %s failed", topic)
        self._event(Event(now, "error", "warning", esp, f"handling {topic} failed: {exc}"))

    def _check_due(self) -> None:
        """Wake the timer loop when the pipeline's next due instant moved before the
        planned wake-up (a ``for:`` just started, a lease was granted...)."""
        wake_at = self._wake_at
        if wake_at is None or self.kaiser is None:
            return
        due = self.kaiser.next_due()
        if due is not None and due < wake_at:
            self._wake_at = None
            self._wake.set()

    def _on_sensor_data(self, msg: codec.SensorData, now: float) -> None:
        self._on_values(msg.esp_id, msg.values, msg.retained, now)

    def _on_values(self, esp: str, values: Sequence[codec.SensorValue], retained: bool, now: float,
                   land: list[Reading] | None = None) -> None:
        """Route, record and stream the values of one message; the rules get them now,
        or, with ``land``, the caller hands them over with others (on_ingest)."""
        assert self.router is not None and self.store is not None
        router = self.router
        if len(values) == 1:  # one value a message: the hot path
            v = values[0]
            r = router.reading(esp, v, retained=retained)
            if not isinstance(r, Reading):
                self._seen(esp, now, retained)
                self._on_unmapped(r, now)
                return
            self._seen(esp, now, retained, tell_pipeline=False)
            self._record(r, esp, v.gpio, v.raw)
            if land is not None:
                land.append(r)
            else:
                out = self.kaiser.receive(r, now)
                if out:
                    self._apply(out, now)
            return
        placed: list[tuple[Reading, int, float | None]] = []
        unmapped: list[Unmapped] = []
        for v in values:
            r = router.reading(esp, v, retained=retained)
            if isinstance(r, Reading):
                placed.append((r, v.gpio, v.raw))
            else:
                unmapped.append(r)
        self._seen(esp, now, retained, tell_pipeline=not placed)
        kaiser = self.kaiser
        for r, gpio, raw in placed:
            self._record(r, esp, gpio, raw)
            if len(placed) == 1 and land is None:
                out = kaiser.receive(r, now)
                if out:
                    self._apply(out, now)
        if land is not None:
            land.extend(p[0] for p in placed)
        elif len(placed) > 1:
            # the values of one sensor/batch message land together, then one evaluation
            out = kaiser.receive_many([p[0] for p in placed], now)
            if out:
                self._apply(out, now)
        for u in unmapped:
            self._on_unmapped(u, now)

    def _record(self, r: Reading, esp: str, gpio: int, raw: float | None) -> None:
        """A routed reading: counted, remembered as the latest, stored, streamed."""
        self.metrics.readings += 1
        self.telemetry.latest[r.sensor] = r
        assert self.store is not None
        self.store.reading(r, esp, gpio, raw)
        for tap in self.reading_taps:
            tap(r)
        hub = self.hub
        if hub is not None and hub.clients:
            hub.publish(f"sensor_data/{esp}", "sensor_data",
                        {"esp_id": esp, "sensor": r.sensor, "value": r.value, "unit": r.unit,
                         "quality": r.quality, "retained": r.retained}, r.ts)

    def _on_unmapped(self, u: Unmapped, now: float) -> None:
        self.metrics.unmapped += 1
        if u.why == "device":
            return  # discovered boards are reported once, on their first message (see _seen)
        key = (u.esp_id, f"unmapped/{u.gpio}/{u.sensor_type}")
        if now - self._malformed_logged.get(key, -1e18) >= MALFORMED_LOG_EVERY:
            self._malformed_logged[key] = now
            log.warning("%s", u.message)
            self._event(Event(now, "unmapped", "warning", u.device or u.esp_id, u.message,
                              {"esp_id": u.esp_id, "gpio": u.gpio, "sensor_type": u.sensor_type, "why": u.why}))

    def _on_malformed(self, rej: codec.Rejection, now: float) -> None:
        assert self.store is not None
        self.metrics.malformed += 1
        who = rej.esp_id or ""
        self.store.event(Event(now, "malformed", "warning", who, rej.reason,
                               {"topic": rej.topic[:300], "kind": rej.kind, "error": rej.error}))
        key = (who, rej.topic[:200])  # once per board and topic per minute
        if now - self._malformed_logged.get(key, -1e18) >= MALFORMED_LOG_EVERY:
            self._malformed_logged[key] = now
            log.warning("%s (further ones from this board and topic are counted, not logged, for a minute)", rej)
            if self.hub is not None:
                self.hub.publish("system", "system", {"kind": "malformed", "message": str(rej)}, now)
            if len(self._malformed_logged) > 10_000:
                self._malformed_logged.clear()

    def _device_name(self, esp: str) -> str | None:
        dev = self._esp_to_device.get(esp)
        return dev.name if dev is not None else None

    def _send(self, reply: Reply) -> None:
        """Publish what the device tracker says, in order, and record its events."""
        if self.mqtt is not None:
            for m in reply.messages:
                self.mqtt.publish(m)
        for ev in reply.events:
            self._event(ev)

    def _seen(self, esp: str, now: float, retained: bool = False, tell_pipeline: bool = True) -> None:
        """A board spoke: it is alive (retained snapshots prove nothing).

        Online/offline is the pipeline's business (it emits the ``device`` events);
        ``tell_pipeline`` False when the message already went to it (readings)."""
        if retained or self.tracker is None:
            return
        board, first = self.tracker.seen(esp, now)
        if board.device is None:
            if first and self.tracker.may_report_discovery(now):
                assert self.store is not None
                self.store.device_status(now, "", esp, "discovered", "not in the device map")
                log.warning("discovered %s: not in the device map (answered pending_approval)", esp)
                self._event(Event(now, "device", "warning", esp,
                                  f"discovered {esp}: not in the device map (answered pending_approval)",
                                  {"esp_id": esp, "status": "discovered"}))
            return
        if tell_pipeline:
            out = self.kaiser.device_seen(board.device, now)
            if out:
                self._apply(out, now)

    def _device_changed(self, ev: Event) -> None:
        """The pipeline says a device went online or offline: remember and record it."""
        if self.deployment is None or self.store is None:
            return
        dev = self.deployment.devices.get(ev.subject)
        if dev is None:
            return
        online = bool(ev.data.get("online"))
        self.online[dev.esp_id] = online
        self.store.device_status(ev.ts, dev.name, dev.esp_id, "online" if online else "offline", ev.message)

    def _emergency_active(self, device: str) -> bool:
        guard = getattr(self.kaiser, "guard", None)
        try:
            return bool(guard is not None and guard.emergency_active(device))
        except Exception:
            return True  # unsure: do not clear a latch

    def _on_heartbeat(self, hb: codec.Heartbeat, now: float) -> None:
        assert self.store is not None and self.tracker is not None
        self.metrics.heartbeats += 1
        if hb.retained:
            return  # a replayed heartbeat is no sign of life and needs no answer
        self._seen(hb.esp_id, now)
        self._send(self.tracker.heartbeat(hb, now))
        name = self._device_name(hb.esp_id)
        if name is None:
            return  # an unknown board's heartbeats are not stored: made-up ids must not grow the store
        # one row per heartbeat carries the board's health (one a minute per board)
        self.store.device_status(now, name, hb.esp_id, "heartbeat", "", _int(hb.uptime), hb.heap_free,
                                 hb.wifi_rssi)

    def _on_will(self, w: codec.Will, now: float) -> None:
        if w.retained:
            return
        name = self._device_name(w.esp_id)
        if name is None:
            return
        out = self.kaiser.device_offline(name, now, f"last will: {w.reason}")
        if out:
            self._apply(out, now)

    def _on_actuator_status(self, st: codec.ActuatorStatus, now: float) -> None:
        assert self.router is not None and self.store is not None
        ref = self.router.actuator_ref(st.esp_id, st.gpio)
        self._seen(st.esp_id, now, st.retained, tell_pipeline=ref is None)
        value = st.value
        self.store.actuator_status(now, ref or "", st.esp_id, st.gpio, st.state, value, st.runtime_ms,
                                   "active" if st.emergency else "normal")
        if self.hub is not None and self.hub.clients:
            self.hub.publish(f"actuator_status/{st.esp_id}", "actuator_status",
                             {"esp_id": st.esp_id, "actuator": ref, "gpio": st.gpio, "state": st.state,
                              "value": value, "runtime_ms": st.runtime_ms, "emergency": st.emergency}, now)
        if ref is None:
            return
        # retained too: legacy firmware publishes every status retained, and the state
        # it reports is what the guard must know
        self._reported(ref, value, now)
        sent = self.last_sent.get(ref)
        if sent is not None and sent.responded and not st.retained and abs(sent.value - value) > 0.02 \
                and not (sent.value > 0 and value > 0 and ref_type(self.deployment, ref) in ("pump", "relay", "valve")):
            self._event(Event(now, "mismatch", "warning", ref,
                              f"{ref} reports {_state_text(value)} but was commanded {_state_text(sent.value)}",
                              {"esp_id": st.esp_id, "gpio": st.gpio, "reported": value, "commanded": sent.value}))
            sent.responded = False  # one event per disagreement

    def _on_actuator_response(self, r: codec.ActuatorResponse, now: float) -> None:
        assert self.router is not None and self.store is not None
        self._seen(r.esp_id, now, r.retained)
        ref = self.router.actuator_ref(r.esp_id, r.gpio) or ""
        self.store.command_response(now, ref, r.esp_id, r.gpio, r.command, r.value, r.duration, r.success, r.message)
        sent = self.last_sent.get(ref)
        if sent is not None:
            sent.responded = True
        if self.hub is not None and self.hub.clients:
            self.hub.publish(f"actuator_command/{r.esp_id}", "actuator_response",
                             {"esp_id": r.esp_id, "actuator": ref, "gpio": r.gpio, "command": r.command,
                              "value": r.value, "success": r.success, "message": r.message}, now)
        if not r.success:
            name = self._device_name(r.esp_id)
            latched = name is not None and self._emergency_active(name)
            # a latched board refuses everything, OFF included: expected during a stop
            self._event(Event(now, "command_failed", "info" if latched else "warning", ref or r.esp_id,
                              f"{ref or r.esp_id} refused {r.command}: {r.message}"
                              + (" (emergency stop latched on the board)" if latched else ""),
                              {"esp_id": r.esp_id, "gpio": r.gpio, "command": r.command, "message": r.message}))
            if ref and not r.retained:
                # the actuator kept its last reported state, whatever was commanded
                self._reported(ref, self.reported.get(ref, 0.0), now)

    def _reported(self, ref: str, value: float, now: float) -> None:
        self.reported[ref] = value
        out = self.kaiser.actuator_reported(ref, value, now)
        if out:
            self._apply(out, now)

    def _on_alert(self, a: codec.ActuatorAlert, now: float) -> None:
        assert self.router is not None
        self._seen(a.esp_id, now, a.retained)
        ref = None if a.whole_board else self.router.actuator_ref(a.esp_id, a.gpio)
        subject = ref or self._device_name(a.esp_id) or a.esp_id
        sev = "critical" if a.alert_type in ("emergency_stop", "runtime_protection") else "warning"
        self._event(Event(now, "alert", sev, subject, f"{subject}: {a.alert_type}: {a.message}",
                          {"esp_id": a.esp_id, "gpio": a.gpio, "type": a.alert_type}))
        if a.alert_type in ("emergency_stop", "runtime_protection") and not a.retained:
            # the board stopped these actuators itself
            dev = self._esp_to_device.get(a.esp_id)
            refs = ([x.ref for x in dev.actuators] if dev is not None else []) if a.whole_board else \
                ([ref] if ref else [])
            for r in refs:
                self._reported(r, 0.0, now)

    def _on_config_response(self, c: codec.ConfigResponse, now: float) -> None:
        self._seen(c.esp_id, now, c.retained)
        if c.retained or self.tracker is None:
            return
        self._event(self.tracker.config_response(c, now))

    # ------------------------------------------------------------------ outputs
    def _event(self, ev: Event) -> None:
        self.metrics.events += 1
        if self.store is not None:
            self.store.event(ev)
        if self.hub is not None and self.hub.clients:
            esp = str(ev.data.get("esp_id", "")) if ev.data else ""
            if ev.kind == "device":
                topic = f"device/{esp or self._esp_of(ev.subject) or ev.subject}"
            elif ev.kind in ("safety", "emergency", "alert", "mismatch", "command_failed", "suspended", "conflict"):
                topic = f"safety/{esp or self._esp_of(ev.subject) or 'all'}"
            else:
                topic = "system"
            self.hub.publish(topic, ev.kind if topic == "system" else topic.split("/")[0],
                             {"kind": ev.kind, "severity": ev.severity, "subject": ev.subject,
                              "message": ev.message, "data": dict(ev.data)}, ev.ts)

    def _esp_of(self, ref: str) -> str | None:
        if self.deployment is None or not ref:
            return None
        dev = self.deployment.devices.get(ref.split(".", 1)[0])
        return dev.esp_id if dev else None

    def _apply(self, out: Outputs, now: float) -> None:
        """Hand one step's outputs to the world: publish, store, stream."""
        store, hub, mqtt, router = self.store, self.hub, self.mqtt, self.router
        assert store is not None and router is not None
        version = self.version.id if self.version else ""
        telemetry, t_in = self.telemetry, self._t_in
        for em in out.emergencies:
            if em.active:
                log.warning("EMERGENCY STOP %s by %s: %s", em.target, em.who or "?", em.reason)
            else:
                log.warning("emergency stop %s reset by %s: %s (nothing is switched on)", em.target,
                            em.who or "?", em.reason)
            self._publish_emergency(em.target, em.reason, em.active, now)
        gpio: int | None
        for a in out.sent:
            c = a.command
            key = (c.actuator, c.value, c.duration, c.toggle)
            hit = self._encoded.get(key)
            if hit is None:
                try:
                    esp, gpio, _ = router.actuator_target(c.actuator)
                    hit = (esp, gpio, router.encode(self.kaiser_id, c))
                except (KeyError, KaiserError) as exc:
                    log.error("cannot encode %s: %s", c, exc)
                    continue
                if len(self._encoded) > 10_000:
                    self._encoded.clear()
                self._encoded[key] = hit
            esp, gpio, msg = hit
            if mqtt is not None:
                mqtt.publish(msg)
            self.metrics.commands_sent += 1
            if t_in is not None:
                telemetry.reading_to_command.observe(time.perf_counter() - t_in)
            telemetry.command(c.actuator, "sent")
            self.last_sent[c.actuator] = Sent(c.value, now, by=c.rule or c.source)
            if log_commands.isEnabledFor(logging.INFO):
                log_commands.info("sent %s %s%s by %s: %s", c.actuator, _state_text(c.value),
                                  f" for {c.duration:g} s" if c.duration else "",
                                  f"rule {c.rule}" if c.rule else c.source, c.reason or "-")
            store.command(now, a, esp, gpio, version)
            if hub is not None and hub.clients:
                hub.publish(f"actuator_command/{esp}", "actuator_command", _command_json(a, esp, gpio), now)
        for b in out.blocked:
            self.metrics.commands_blocked += 1
            telemetry.command(b.command.actuator, "blocked", str(b.code))
            self._log_block(b, now)
            esp = self._esp_of(b.command.actuator) or ""
            gpio = None
            with contextlib.suppress(KeyError):
                gpio = router.actuator_target(b.command.actuator)[1]
            store.command(now, b, esp, gpio, version)
            if hub is not None and hub.clients:
                hub.publish(f"safety/{esp or 'all'}", "safety", _command_json(b, esp, gpio), now)
        for run in out.runs:
            self.metrics.rule_runs += 1
            telemetry.rule_run(run.rule, run.outcome, run.ts)
            if run.config_version != version:  # runs of the reload step itself carry the network digest
                run = replace(run, config_version=version)
            store.rule_run(run, (self.clock.now() - now) * 1000.0, version)
            if hub is not None and hub.clients:
                hub.publish(f"logic_execution/{run.rule}", "logic_execution",
                            {"rule": run.rule, "trigger": dict(run.trigger), "actions": list(run.actions),
                             "outcome": run.outcome, "config_version": version}, run.ts)
        for n in out.notifications:
            self.metrics.notifications += 1
            store.notification(n)
            log.log(logging.WARNING if n.level in ("warning", "critical") else logging.INFO,
                    "notify [%s]%s: %s", n.level, f" {n.rule}" if n.rule else "", n.text)
            if hub is not None and hub.clients:
                hub.publish("notification", "notification",
                            {"level": n.level, "text": n.text, "rule": n.rule}, n.ts)
        for ev in out.events:
            if ev.kind == "device" and "online" in ev.data:
                self._device_changed(ev)
            self._event(ev)
        if out.emergencies:
            self._save_snapshot(immediate=True)
        for tap in self.output_taps:
            tap(out, now)
        self._check_due()

    def _log_block(self, b: Blocked, now: float) -> None:
        """One log line per block; the same block again (actuator, code, rule) within
        BLOCK_LOG_EVERY is counted and named in the next line instead."""
        if not log_commands.isEnabledFor(logging.INFO):
            return
        c = b.command
        key = (c.actuator, str(b.code), c.rule or c.source)
        last = self._block_logged.get(key)
        if last is not None and now - last[0] < BLOCK_LOG_EVERY:
            self._block_logged[key] = (last[0], last[1] + 1)
            return
        again = f" ({last[1]} more like it since the last line)" if last is not None and last[1] else ""
        if len(self._block_logged) > 10_000:
            self._block_logged.clear()
        self._block_logged[key] = (now, 0)
        log_commands.info("blocked %s %s by %s: %s: %s%s", c.actuator, _state_text(c.value),
                          f"rule {c.rule}" if c.rule else c.source, b.code, b.reason, again)

    def _publish_emergency(self, target: str, reason: str, active: bool, now: float) -> None:
        """A stop goes to the boards as both generations act on it; a reset sends
        ``clear_emergency`` to each board the guard no longer holds (engine/devices.py)."""
        if self.tracker is None:
            return
        self._send(self.tracker.emergency(target, reason, now) if active else self.tracker.reset(target, now))

    # ------------------------------------------------------------------ timers
    def poke(self) -> None:
        """Something may have moved the next due time earlier."""
        self._wake.set()

    async def _timer_loop(self) -> None:
        """Tick the pipeline when it is due (``next_due()``: timers fire on time) and
        save its state.

        The loop sleeps until the pipeline's next due instant, the next save, or
        MAX_IDLE, whichever comes first; a message that moves the due instant earlier
        wakes it (``_check_due``, about a microsecond: ``next_due`` keeps heaps, it
        scans nothing). Saving costs a snapshot (0.6 ms for 1,000 rules, here) plus
        its JSON (~10 ms, in the store's writer thread, in pieces), so it happens
        every flush interval, or less often when it is expensive: at most about
        0.2 % of the time, and at least every 30 s.
        Emergency stops, resets, reloads and shutdown save at once regardless."""
        flush = max(0.05, self.settings.store.flush_interval)
        snapshot_every = flush
        overdue = False
        while True:
            self._wake.clear()
            now = self.clock.now()
            wake_at = min(now + MAX_IDLE, self._last_snapshot + snapshot_every)
            try:
                due = self.kaiser.next_due() if self.kaiser is not None else None
            except Exception:  # the loop must keep ticking whatever happens
                log.exception("next_due failed")
                due = None
            if due is not None and due < wake_at:
                wake_at = due
            self._wake_at = wake_at
            delay = wake_at - now
            if delay <= 0:
                # due now; if it was due at the last tick too (a due instant a tick does
                # not clear), back off a little instead of spinning
                delay, overdue = (0.005 if overdue else 0.0), True
            else:
                overdue = False
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            else:
                await asyncio.sleep(0)  # let waiting messages in between back-to-back ticks
            self._wake_at = None
            now = self.clock.now()
            try:
                out = self.kaiser.tick(now)
                if out:
                    self._apply(out, now)
                if self.tracker is not None:
                    self._send(self.tracker.tick(now))
            except Exception:
                self.metrics.handler_errors += 1
                log.exception("timer tick failed")
            if now - self._last_snapshot >= snapshot_every:
                self._last_snapshot = now
                t0 = time.perf_counter()
                self._save_snapshot()
                # its JSON is made in the store's writer thread, in small pieces (the
                # readings never wait long for the GIL); count that CPU time too
                cost = time.perf_counter() - t0 + (self.store.state_seconds if self.store is not None else 0.0)
                snapshot_every = max(flush, min(30.0, cost * 500))

    # ------------------------------------------------------------------ reload
    async def _on_files_changed(self, paths: list[str]) -> None:
        log.info("rules changed: %s", ", ".join(Path(p).name for p in paths))
        await self.reload()

    async def reload(self) -> bool:
        """Load+check+compile the rules dir; only an error-free version replaces the
        running one. Returns True when the new version runs."""
        return await self.reload_from(self.rules_dir)

    async def reload_from(self, rules_dir: Path, commit: Commit | None = None) -> bool:
        """:meth:`reload` from ``rules_dir`` (pull mode: the worktree of ``commit``),
        which becomes the rules dir when its version runs. Returns True when it runs."""
        async with self._reload_lock:
            now = self.clock.now()
            try:
                deployment, diagnostics, version = await asyncio.to_thread(load_rules, rules_dir, self.tz)
            except Exception as exc:
                diagnostics, version, deployment = [
                    Diagnostic("K900", "error", f"cannot load the rules: {exc}")], version_of(rules_dir), None
            errors = _errors(diagnostics)
            if self.version is not None and version.hash == self.version.hash and not errors:
                if commit is not None and rules_dir != self.rules_dir:  # another commit, the same rules
                    self.rules_dir, self.version = rules_dir, version
                    self._record_version(version, ok=True, now=now, commit=commit)
                elif self.last_reload is not None and not self.last_reload.get("ok", True):
                    # the refused edit was undone: the running version is what the files say again
                    log.info("rules OK again: the files are version %s, which runs", version.id)
                    self._record_version(version, ok=True, now=now, commit=commit)
                return True  # nothing changed (an editor touched a file)
            if errors or deployment is None:
                self._refused(version, [d.text() for d in errors], now, f"reload refused: {len(errors)} error(s)",
                              rules_dir, commit)
                return False
            try:
                out = self.kaiser.reload(deployment, now)
            except Exception as exc:
                log.exception("reload failed in the engine")
                self._refused(version, [str(exc)], now, f"reload failed: {exc}", rules_dir, commit)
                return False
            # the app's own reload event below names the version; the pipeline's names its network digest
            out.events[:] = [e for e in out.events if e.kind != "reload"]
            was_refused = self.last_reload is not None and not self.last_reload.get("ok", True)
            old = self.version.id if self.version else "?"
            self.rules_dir = rules_dir
            self._install(deployment, version)
            self.metrics.reloads += 1
            log.info("%sreload: rules version %s running (was %s)%s, %d devices, %d rules",
                     "rules OK again: " if was_refused else "", version.id, old,
                     f", commit {commit.describe()}" if commit else
                     (f", git {version.git_commit[:12]}" if version.git_commit else ""),
                     len(deployment.devices), len(deployment.rules))
            self._record_version(version, ok=True, now=now, commit=commit)
            self._event(Event(now, "reload", "info", "", f"rules version {version.id} running",
                              {"version": version.id, "warnings": [d.text() for d in diagnostics],
                               **({"commit": commit.sha, "author": commit.author, "subject": commit.subject}
                                  if commit else {})}))
            if out:
                self._apply(out, now)
            self._save_snapshot(immediate=True)
            self.poke()
            return True

    def _refused(self, version: Version, errors: list[str], now: float, message: str, rules_dir: Path,
                 commit: Commit | None = None, data: dict[str, Any] | None = None) -> None:
        """A version that does not replace the running one: counted, logged with every
        finding, recorded in config_versions, announced as a ``system`` event."""
        self.metrics.reload_failures += 1
        log.error("%s; version %s keeps running:\n%s", message, self.version.id if self.version else "?",
                  "\n".join(errors))
        self._record_version(version, ok=False, now=now, errors=errors, rules_dir=rules_dir, commit=commit)
        extra = {"commit": commit.sha, "author": commit.author, "subject": commit.subject} if commit else {}
        self._event(Event(now, "reload", "warning", "", f"{message}; the running rules stay",
                          {"errors": errors, "version": version.id, **extra, **(data or {})}))

    def refuse(self, rules_dir: Path, refusal: Refusal) -> None:
        """Pull mode refused a commit before any reload (lint errors, failing rule tests)."""
        self._refused(version_of(rules_dir), list(refusal.findings), self.clock.now(), refusal.text(), rules_dir,
                      refusal.commit, {"gitops": refusal_json(refusal)})

    # ------------------------------------------------------------------ control
    async def _control(self, msg: dict[str, Any], operator: str = "server") -> dict[str, Any]:
        """WebSocket control messages. The Hub checked the key; ``operator`` (the key's
        name, plus the login the client reports) is what the record names ("server":
        called in-process, as tests do). The message's ``who`` alone names nobody."""
        now = self.clock.now()
        kind = msg.get("type")
        if kind in ("emergency_stop", "reset_emergency"):
            target = msg.get("device") or "all"
            if not isinstance(target, str) or (target != "all" and (
                    self.deployment is None or target not in self.deployment.devices)):
                raise ControlRefused(f"unknown device {target!r}")
            reason = str(msg.get("reason") or ("reset" if kind == "reset_emergency" else "emergency stop"))[:500]
            if kind == "emergency_stop":
                out = self.kaiser.emergency_stop(target, reason, operator, now)
            else:
                out = self.kaiser.reset(target, operator, reason, now)
            self._apply(out, now)
            self._save_snapshot(immediate=True)
            return {"ok": True, "target": target}
        if kind == "command":
            ref = msg.get("actuator")
            if not isinstance(ref, str) or self.deployment is None or self.deployment.actuator(ref) is None:
                raise ControlRefused(f"unknown actuator {ref!r}")
            try:
                value, toggle = parse_set(msg.get("set"))
                dur = msg.get("for")
                duration = None if dur in (None, "", 0) else parse_duration(dur)
            except (ValueError, KaiserError) as exc:
                raise ControlRefused(str(exc)) from None
            priority = msg.get("priority", 1000)
            if priority is None:
                priority = 1000
            if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 1_000_000:
                raise ControlRefused(f"priority must be a whole number from -1000000 to 1000000, got {priority!r}")
            why = str(msg.get("reason") or "manual")[:500]
            cmd = Command(ref, value, duration, source="manual", reason=f"{why} (by {operator})",
                          toggle=toggle, priority=priority)
            out = self.kaiser.command(cmd, now)
            self._apply(out, now)
            blocked = [b for b in out.blocked if b.command.actuator == ref]
            if blocked:
                b = blocked[-1]
                raise ControlRefused(f"blocked {b.code}: {b.reason}")
            return {"ok": True, "sent": [_command_json(a, "", None) for a in out.sent]}
        if kind == "sync":  # pull mode: fetch now (`kaiser sync`)
            if self.gitops is None:
                raise ControlRefused("pull mode is off: kaiser.toml has no [gitops] repo")
            result = await self.gitops.sync()
            if not result.get("ok"):
                raise ControlRefused("\n".join([str(result.get("message")), *result.get("findings", [])[:20]]))
            return result
        raise ControlRefused(f"unknown control {kind!r}")

    # ------------------------------------------------------------------ health
    def mqtt_lanes(self) -> tuple[int, int]:
        """(publish lanes open, of them connected): engine/adapters/mqtt5link.py."""
        return self.mqtt.lanes_status() if isinstance(self.mqtt, Mqtt5Link) else (0, 0)

    def mqtt_up(self) -> bool:
        """Every connection to the broker is up: the main one, its publish lanes (a
        lane that is down holds its boards' commands back) and the ingest reader."""
        lanes, lanes_up = self.mqtt_lanes()
        return bool(self.mqtt and self.mqtt.connected and lanes_up == lanes
                    and (self.ingest is None or self.ingest.connected))

    def health(self) -> dict[str, Any]:
        store = self.store
        lanes, lanes_up = self.mqtt_lanes()
        up = self.mqtt_up()
        return {
            "status": "ok" if up else "degraded",
            "kaiser_id": self.kaiser_id,
            "mqtt": {"connected": up,
                     "url": self.mqtt_url, "client": self.mqtt_client,
                     "reconnects": self.mqtt.reconnects if self.mqtt else 0,
                     # messages read and socket reads (MQTT 5 link): their ratio is the batch size
                     "messages": getattr(self.mqtt, "received", None),
                     "batches": getattr(self.mqtt, "batches", None),
                     "lanes": {"open": lanes, "connected": lanes_up},
                     "ingest": None if self.ingest is None else {
                         "connected": self.ingest.connected, "pid": self.ingest.pid,
                         "messages": self.ingest.received, "batches": self.ingest.batches,
                         "restarts": self.ingest.restarts}},
            "store": {"path": self.settings.store.path, "ok": bool(store and not store.failing),
                      "pending": store.pending() if store else 0, "rows_written": store.rows_written if store else 0,
                      "last_error": store.last_error if store else "", "writer": self.settings.store.writer,
                      "pid": store.pid if isinstance(store, StoreClient) else None},
            "rules_version": self.version.id if self.version else None,
            "git_commit": self.version.git_commit if self.version else None,
            "devices": {b.device or esp: ("online" if self.online.get(esp) else "offline")
                        for esp, b in (self.tracker.boards.items() if self.tracker else ())},
            "boards": self.tracker.summary() if self.tracker else {},
            "uptime_s": round(self.clock.monotonic() - self._started_at, 1),
            "version": __version__,
            "rules_dir": str(self.rules_dir),
            "last_reload": self.last_reload,
            "reload_ok": bool((self.last_reload or {}).get("ok", True)),
            "latency": latency_summary(self),
            "latches": [{"target": x.target, "reason": x.reason, "who": x.who, "since": x.ts}
                        for x in (self.kaiser.guard.latches() if self.kaiser is not None else ())],
            "gitops": self.gitops.health() if self.gitops is not None else None,
        }

    def prometheus(self) -> str:
        """``GET /metrics``: Prometheus text, labelled (engine/metrics.py)."""
        return render_metrics(self)


def mqtt_client_mode(configured: str = "auto") -> str:
    """The MQTT client asked for: ``KAISER_MQTT_CLIENT`` (auto, mqtt5, process,
    aiomqtt), else the older ``KAISER_INGEST=process`` (the reader process;
    ``inline``: aiomqtt), else ``[mqtt] client`` (``configured``)."""
    mode = os.environ.get("KAISER_MQTT_CLIENT", "").strip().lower()
    if not mode:
        legacy = os.environ.get("KAISER_INGEST", "").strip().lower()
        mode = {"process": "process", "inline": "aiomqtt", "off": "aiomqtt", "0": "aiomqtt"}.get(legacy, configured)
    return mode


def mqtt_client(url: str, configured: str = "auto") -> str:
    """The MQTT client for ``url``: ``mqtt5`` (the default), ``process`` or ``aiomqtt``
    (engine/adapters/mqtt5link.py ``choose``)."""
    return choose(url, mqtt_client_mode(configured))


def _tune_gc() -> None:
    """Latency tuning of the interpreter for a server process. The compiled rules, the device map and the libraries are long-lived: move them
    out of the collector's way (a full collection over them took ~130 ms, a latency
    spike), and collect the young generation less often (messages make short-lived
    garbage without cycles)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    # the store's writer thread builds Arrow batches in Python: hand the GIL back to
    # the event loop after 1 ms instead of 5 ms so readings do not wait behind it
    sys.setswitchinterval(0.001)


def ref_type(deployment: Deployment | None, ref: str) -> str | None:
    a = deployment.actuator(ref) if deployment is not None else None
    return a.type if a is not None else None


def _state_text(v: float) -> str:
    return "off" if v <= 0 else ("on" if v >= 1 else f"{v:.2f}")


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def _command_json(v: Allowed | Blocked, esp: str, gpio: int | None) -> dict[str, Any]:
    c = v.command
    d: dict[str, Any] = {"actuator": c.actuator, "esp_id": esp, "gpio": gpio, "value": c.value,
                         "duration": c.duration, "source": c.source, "rule": c.rule, "reason": c.reason}
    if isinstance(v, Blocked):
        d.update(blocked=True, code=str(v.code), block_reason=v.reason)
    return d
