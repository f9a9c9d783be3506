"""The current generation of El Trabajante (commit 0a9b54ff, 2026).

Every rule cites the firmware function it comes from (``src/`` of that commit).
The main differences to legacy firmware:

- **registration gate** (``MQTTClient::publish``, ``command_admission.cpp``): after
  every (re)connect the board publishes only heartbeats (every 5 s), responses,
  ``config_response`` and ``*/error`` topics, and refuses config, actuator and
  most system commands with ``REGISTRATION_PENDING``, until a heartbeat ack
  passes the contract (main.cpp ``routeIncomingMessage``, heartbeat ack branch;
  ``OfflineModeManager::validateServerAckContract``). Then heartbeats every 60 s.
- **120 s without a valid ack** (main.cpp ``checkServerAckTimeout``) and
  ``server/status`` offline drive every actuator to its ``default_state``;
  the offline state machine (``offline_mode_manager.cpp``) then owns the
  handover epoch the next ack must echo.
- **config contract** (``routeIncomingMessage`` config branch,
  ``config_update_queue.cpp processConfigUpdateQueue``): ``correlation_id``
  required, payload < 4352 B, optional monotonic ``generation``, one parse of the
  whole push (sensors, actuators, offline rules), unchanged actuators skipped.
- **emergency contracts**: string-typed broadcast fields
  (``emergency_broadcast_contract.h``), tokens from NVS, fail-closed production
  builds (``EMERGENCY_TOKEN_REQUIRED``), ``set_emergency_token`` and
  ``exit_safe_mode`` system commands.
- transport: esp32dev builds use ESP-IDF MQTT (QoS as asked, never retained,
  8 KB receive buffer); XIAO builds use PubSubClient (``platformio.ini``
  ``MQTT_USE_PUBSUBCLIENT=1``): QoS 0, 1024 B packets, and ``subscribe(topic, 2)``
  fails in PubSubClient (it accepts QoS 0 or 1 only), so a current XIAO never
  subscribes to config, system commands, the broadcast stop or actuator commands.
"""

from __future__ import annotations

from typing import Any

from engine.codec import Outgoing
from engine.firmware import actuators as drv
from engine.firmware import ajson, scanner
from engine.firmware.actuators import Actuator, ActuatorConfig
from engine.firmware.board import Board, Sensor, dumps, fit, fixed3
from engine.firmware.hardware import capability
from engine.firmware.legacy import packet_size, parse_actuator

HEARTBEAT_S = 60.0               # MQTTClient::HEARTBEAT_INTERVAL_MS
HEARTBEAT_UNREGISTERED_S = 5.0   # MQTTClient::HEARTBEAT_REGISTRATION_RETRY_MS
ACK_TIMEOUT_S = 120.0            # main.cpp SERVER_ACK_TIMEOUT_MS
OFFLINE_DELAY_S = 30.0           # OFFLINE_ACTIVATION_DELAY_MS
ADOPTION_SETTLE_S = 2.0          # ADOPTION_SETTLE_MS
STALE_RETAIN_S = 15.0            # server/status: stale retained offline window after reconnect
CONFIG_PAYLOAD_MAX = 4352        # config_update_queue.h CONFIG_PAYLOAD_MAX_LEN
CONFIG_DOC = 7680                # CONFIG_JSON_DOC_SIZE (zero-copy parse)
IDF_RX_BUFFER = 8192             # mqtt_event_handler data_buf
METRICS_MAX_SKIP = 5             # MQTTClient::METRICS_MAX_SKIP_COUNT
MAX_OFFLINE_RULES = 8
MAX_CONFIG_FAILURES = 10
NVS_SENSORS_AT_BOOT = 10         # setup(): SensorConfig sensors[10]

#: SystemState numbers (models/system_types.h), reported in config_status.state
STATES = {"CONFIG_PENDING_AFTER_RESET": 8, "OPERATIONAL": 9, "PENDING_APPROVAL": 10,
          "SAFE_MODE": 12, "ERROR": 14}
RESET_REASONS = {"POWERON": 1, "EXT": 2, "SW": 3, "PANIC": 4, "INT_WDT": 5, "TASK_WDT": 6,
                 "WDT": 7, "DEEPSLEEP": 8, "BROWNOUT": 9, "SDIO": 10}
#: system commands admitted while pending approval / config pending / degraded
#: (command_admission.cpp isSystemCommandAllowedInPending)
PENDING_ALLOWLIST = ("status", "diagnostics", "get_config", "set_log_level", "safe_mode")
#: error codes of per-sensor failures (models/error_codes.h)
ERR = {"MISSING_FIELD": 2011, "TYPE_MISMATCH": 2010, "VALIDATION_FAILED": 2010,
       "GPIO_CONFLICT": 1002, "CONFIG_FAILED": 1041, "NVS_WRITE_FAILED": 2003}
MODES = ("ONLINE", "DISCONNECTED", "OFFLINE_ACTIVE", "RECONNECTING", "ADOPTING")


class CurrentBoard(Board):
    """A board running current El Trabajante (0a9b54ff).

    Extra keyword arguments: ``transport`` ("esp-idf" | "pubsubclient"; default by
    board kind as ``platformio.ini`` builds it), ``broadcast_token`` (the NVS
    ``broadcast_em_tok``), ``approved`` (the NVS approval flag: a board that was
    approved before boots OPERATIONAL, else PENDING_APPROVAL until an ``online`` ack).
    """

    generation = "current"

    def __init__(self, esp_id: str, *, kaiser_id: str = "god", board_kind: str = "esp32dev",
                 emergency_token: str | None = None, production: bool = False, now: float = 0.0,
                 transport: str | None = None, broadcast_token: str | None = None,
                 approved: bool = False) -> None:
        self.transport = transport or ("pubsubclient" if board_kind == "xiao_esp32c3" else "esp-idf")
        if self.transport not in ("esp-idf", "pubsubclient"):
            raise ValueError(f"transport must be esp-idf or pubsubclient, got {self.transport!r}")
        self._broadcast_token = broadcast_token
        self._approved_at_start = approved
        super().__init__(esp_id, kaiser_id=kaiser_id, board_kind=board_kind,
                         emergency_token=emergency_token, production=production, now=now)

    # ------------------------------------------------------------------ boot
    def _init_nvs(self, emergency_token: str | None) -> None:
        self.nvs.update({
            "emergency_auth": emergency_token or "", "broadcast_em_tok": self._broadcast_token or "",
            "approved": self._approved_at_start, "sensors": {}, "actuators": [],
            "applied_gen": 0, "applied_gen_sensor": 0, "applied_gen_act": 0, "applied_gen_off": 0,
            "offline_rules": [],
        })

    def _boot_state(self, now: float) -> None:
        self.system_state = "OPERATIONAL" if self.nvs["approved"] else "PENDING_APPROVAL"
        self._registration = False
        self._last_ack: float | None = None
        self._timeout_triggered = False
        self.mode = "ONLINE"
        self._disconnect_at: float | None = None
        self._adoption_at: float | None = None
        self.active_epoch = 0
        self.completed_epoch = 0
        self.last_reject = "NONE"
        self.counters = dict.fromkeys(
            ("offline_enter", "adopting_enter", "adoption_noop", "adoption_delta", "handover_abort",
             "handover_contract_reject", "emergency_rejected_no_token"), 0)
        self._seq = 0
        self._last_hb = now
        self._reconnects = 0
        self._last_connect: float | None = None
        self._boot_sequence_id = f"{self.esp_id}-b{self.boot_count}-r{RESET_REASONS.get(self.reset_reason, 0)}"
        self._segment_start: int | None = None
        self._will_ts = 0
        self._onewire_pin: int | None = None
        self._metrics_skip = METRICS_MAX_SKIP
        self._last_metrics: tuple[object, ...] | None = None
        self._fallback_ids = 0
        self.offline_rules: list[int] = list(self.nvs["offline_rules"])
        # setup(): sensors (at most 10) then actuators from NVS
        for cfg in list(self.nvs["sensors"].values())[:NVS_SENSORS_AT_BOOT]:
            self._configure_sensor(Sensor(**vars(cfg)))
        for acfg in list(self.nvs["actuators"]):
            self._configure_actuator(ActuatorConfig(**vars(acfg)), now)
        # setup(): the snapshot counts what was loaded from NVS
        n_s = min(len(self.nvs["sensors"]), NVS_SENSORS_AT_BOOT)
        n_a = len(self.nvs["actuators"])
        any_config = n_s > 0 or n_a > 0 or bool(self.offline_rules)
        if any_config and not self._runtime_ready(n_s, n_a):
            self.system_state = "CONFIG_PENDING_AFTER_RESET"

    def _runtime_ready(self, n_s: int | None = None, n_a: int | None = None) -> bool:
        """``evaluateRuntimeReadiness`` with the default policy: at least one sensor and
        one actuator (offline rules alone without actuators also exit). Counts default
        to the managers' (``collectRuntimeReadinessSnapshot``)."""
        if n_s is None:
            n_s = sum(1 for s in self.sensor_list if s.active)
        if n_a is None:
            n_a = self.actuator_count
        if self.offline_rules and n_a == 0:
            return True
        return n_s > 0 and n_a > 0

    def _provisioning(self) -> None:
        self._registration = True

    # ------------------------------------------------------------ public state
    @property
    def registered(self) -> bool:
        """The registration gate is open (a valid ack since the last connect)."""
        return self._registration

    @property
    def safe_state(self) -> bool:
        """The board forced its actuators safe (ack timeout, server offline or a
        lost connection) and has not yet seen the server back."""
        return self._timeout_triggered or self.mode in ("DISCONNECTED", "OFFLINE_ACTIVE", "RECONNECTING")

    @property
    def epoch(self) -> int:
        """``active_handover_epoch``: the number an ack must carry after an offline period."""
        return self.active_epoch

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _unix(self, now: float | None = None) -> int:
        return int(self._now if now is None else now)

    def _fallback_id(self, prefix: str) -> str:
        self._fallback_ids += 1
        return f"{prefix}_{self.millis()}_{self._fallback_ids}"

    # ------------------------------------------------------------- transport
    def subscriptions(self) -> list[tuple[str, int]]:
        """main.cpp ``subscribeToAllTopics`` on every connect (clean session). With
        PubSubClient, ``subscribe(topic, 2)`` fails: those topics are not subscribed."""
        if not self.connected:
            return []
        subs = [(self._topic("system/heartbeat/ack"), 1), (self._topic("config"), 2),
                (self._topic("system/command"), 2), ("kaiser/broadcast/emergency", 2),
                (self._topic("actuator/+/command"), 2), (self._topic("actuator/emergency"), 1),
                (self._topic("zone/assign"), 1), (self._topic("subzone/assign"), 1),
                (self._topic("subzone/remove"), 1), (self._topic("subzone/safe"), 1),
                (self._topic("sensor/+/command"), 2), (f"kaiser/{self.kaiser_id}/server/status", 1)]
        if self.transport == "pubsubclient":
            subs = [(t, q) for t, q in subs if q <= 1]
        return subs

    def will(self) -> Outgoing:
        """``MQTTClient::connect``: ``system/will``, QoS 1, retained, Unix time of the connect."""
        body = (f'{{"status":"offline","esp_id":"{self.esp_id}","reason":"unexpected_disconnect",'
                f'"timestamp":{self._will_ts}}}')
        return Outgoing(self._topic("system/will"), body.encode(), 1, True)

    def _transport(self, topic: str, payload: str, qos: int) -> Outgoing | None:
        """``MQTTClient::publish``: the registration gate, then ESP-IDF (QoS as asked,
        retain false) or PubSubClient (QoS 0, retain false)."""
        if not self._registration and not gate_allows(topic):
            return None
        if not payload:
            return None
        if self.transport == "pubsubclient":
            return Outgoing(topic, payload.encode(), 0, False)
        return Outgoing(topic, payload.encode(), qos, False)

    def _on_connect(self, now: float, first: bool) -> None:
        """``mqtt_event_handler`` MQTT_EVENT_CONNECTED + main.cpp ``onMqttConnectCallback``."""
        self._registration = False
        self._last_ack = now
        self._timeout_triggered = False
        self._last_connect = now
        self._metrics_skip = METRICS_MAX_SKIP
        self._will_ts = self._unix(now)
        if self.transport == "esp-idf":
            epoch = self.active_epoch + (1 if self.mode == "OFFLINE_ACTIVE" else 0)
            self._session_announce(max(epoch, 1), now)
        if not first:
            self._reconnects += 1
            self._all_status()  # Mechanism E (blocked by the gate that was just reset)
            self._offline_on_reconnect()
        if self.transport == "esp-idf":
            self._heartbeat(now, force=True)  # bootstrap heartbeat after the ack subscription

    def _on_disconnect(self, now: float) -> None:
        """MQTT_EVENT_DISCONNECTED / ``handleDisconnection``: gate closed, actuators safe
        (unless offline rules take over), offline grace timer started."""
        self._registration = False
        self._offline_on_disconnect(now)
        if self.offline_rules:
            self._safe_uncovered(now)
        else:
            self.safe_state_all(now)

    def _session_announce(self, epoch: int, now: float) -> None:
        """``MQTTClient::publishSessionAnnounce`` (ESP-IDF only; topic hard-coded to
        ``kaiser/god``, published directly, QoS 1, not gated)."""
        self._ensure_segment(now)
        boot_ts = self._segment_start or self._unix(now)
        body = (f'{{"esp_id":"{self.esp_id}","handover_epoch":{epoch},"session_epoch":{epoch},'
                f'"reason":"{"reconnect" if epoch > 1 else "boot"}","ts_ms":{int(now * 1000)},'
                f'"boot_ts":"{boot_ts}"}}')
        self._out.append(Outgoing(f"kaiser/god/esp/{self.esp_id}/session/announce", body.encode(), 1, False))

    def _ensure_segment(self, now: float) -> None:
        if self._segment_start is None:
            self._segment_start = self._unix(now)

    # ---------------------------------------------------------- heartbeat
    def _heartbeat(self, now: float, force: bool = False) -> None:
        """``MQTTClient::publishHeartbeat``: every 5 s until registered, then 60 s;
        QoS 0. esp32dev builds split the metrics into ``system/heartbeat_metrics``
        (``ENABLE_METRICS_SPLIT``)."""
        interval = HEARTBEAT_S if self._registration else HEARTBEAT_UNREGISTERED_S
        if not force and now - self._last_hb < interval:
            return
        if not self.connected:
            return
        self._last_hb = now
        self._ensure_segment(now)
        split = self.board_kind == "esp32dev"
        b: dict[str, Any] = {
            "esp_id": self.esp_id, "zone_id": self.zone_id, "master_zone_id": self.master_zone_id,
            "zone_assigned": self.zone_assigned, "ts": self._unix(now), "time_valid": True,
            "boot_sequence_id": self._boot_sequence_id, "reset_reason": self.reset_reason,
            "segment_start_ts": self._segment_start, "uptime": self.uptime(now), "heap_free": 150000,
            "wifi_rssi": -58, "sensor_count": sum(1 for s in self.sensor_list if s.active),
            "actuator_count": self.actuator_count, "wifi_ip": "192.168.1.50",
        }
        if not split:
            b.update(self._metrics_fields(inline=True))
        b.update(active_handover_epoch=self.active_epoch, handover_completed_epoch=self.completed_epoch,
                 persistence_degraded=False, persistence_degraded_reason="NONE",
                 runtime_state_degraded=self.system_state in ("CONFIG_PENDING_AFTER_RESET", "SAFE_MODE", "ERROR"),
                 mqtt_circuit_breaker_open=False, wifi_circuit_breaker_open=False, network_degraded=False)
        if not split:
            b.update(persistence_drift_count=0, critical_outcome_drop_count=0, publish_outbox_drop_count=0,
                     sensor_command_queue_overflow_count=0, safe_publish_retry_count=0,
                     emergency_rejected_no_token_total=self.counters["emergency_rejected_no_token"])
        b["config_status"] = {"wifi_configured": True, "zone_assigned": self.zone_assigned,
                              "system_configured": True, "subzone_count": 0,
                              "boot_count": self.boot_count, "state": STATES.get(self.system_state, 9)}
        self._publish(self._topic("system/heartbeat"), dumps(b), 0)
        if split:
            self._heartbeat_metrics(now)

    def _metrics_fields(self, inline: bool) -> dict[str, Any]:
        c = self.counters
        return {"metrics_schema_version": 1, "offline_enter_count": c["offline_enter"],
                "adopting_enter_count": c["adopting_enter"], "adoption_noop_count": c["adoption_noop"],
                "adoption_delta_count": c["adoption_delta"], "handover_abort_count": c["handover_abort"],
                "handover_contract_reject_count": c["handover_contract_reject"],
                "handover_contract_last_reject": self.last_reject}

    def _heartbeat_metrics(self, now: float) -> None:
        """``MQTTClient::publishHeartbeatMetrics``: only when registered, on change or
        every 5th heartbeat."""
        if not self._registration:
            return
        self._metrics_skip = min(self._metrics_skip + 1, 255)
        snapshot = (*self.counters.values(), self.last_reject)
        if snapshot == self._last_metrics and self._metrics_skip < METRICS_MAX_SKIP:
            return
        self._metrics_skip = 0
        self._last_metrics = snapshot
        b = {"esp_id": self.esp_id, "ts": self._unix(now), **self._metrics_fields(inline=False),
             "persistence_drift_count": 0, "critical_outcome_drop_count": 0, "publish_outbox_drop_count": 0,
             "publish_queue_fill": 0, "publish_queue_hwm": 0, "publish_queue_shed_count": 0,
             "publish_queue_drop_count": 0, "sensor_command_queue_overflow_count": 0,
             "safe_publish_retry_count": 0,
             "emergency_rejected_no_token_total": self.counters["emergency_rejected_no_token"]}
        self._publish(self._topic("system/heartbeat_metrics"), dumps(b), 0)

    # ------------------------------------------------------------------ loop
    def _tick(self, now: float) -> None:
        self._duration_auto_off(now)
        self._ack_timeout(now)
        self._offline_timers(now)
        self._heartbeat(now)
        ms = self.millis(now)
        if ms - self._last_status_ms > 30000:  # communication_task handleActuatorStatusPublish
            self._all_status()
            self._last_status_ms = ms

    def _due(self) -> list[float]:
        due: list[float] = [self._boot_at + (self._last_status_ms + 30001) / 1000]
        if self.connected:
            due.append(self._last_hb + (HEARTBEAT_S if self._registration else HEARTBEAT_UNREGISTERED_S))
            if self._last_ack is not None and not self._timeout_triggered:
                due.append(self._last_ack + ACK_TIMEOUT_S + 0.001)
        if self.mode == "DISCONNECTED" and self._disconnect_at is not None:
            due.append(self._disconnect_at + OFFLINE_DELAY_S)
        if self.mode == "ADOPTING" and self._adoption_at is not None:
            due.append(self._adoption_at + ADOPTION_SETTLE_S)
        for a in self._actuators():
            if a.duration_end_ms and a.cfg_state:
                due.append(self._boot_at + a.duration_end_ms / 1000)
        return due

    def _duration_auto_off(self, now: float) -> None:
        """``ActuatorManager::processActuatorLoops`` F1: ``duration`` of an ON ran out."""
        ms = self.millis(now)
        for a in list(self._actuators()):
            if a.duration_end_ms and a.cfg_state and ms >= a.duration_end_ms:
                a.duration_end_ms = 0
                a.last_command_source = "firmware:auto_duration"
                self.control_binary(a.gpio, False, now)
                self._status(a)

    def _ack_timeout(self, now: float) -> None:
        """main.cpp ``checkServerAckTimeout``: 120 s without a valid ack."""
        if not self.connected or self._last_ack is None or self._timeout_triggered:
            return
        if now - self._last_ack > ACK_TIMEOUT_S:
            self._timeout_triggered = True
            if not self.offline_rules:
                self.safe_state_all(now)
            self._offline_on_disconnect(now)

    def _offline_timers(self, now: float) -> None:
        """``OfflineModeManager::checkDelayTimer``."""
        if self.mode == "ADOPTING" and self._adoption_at is not None and now - self._adoption_at >= ADOPTION_SETTLE_S:
            self.mode = "ONLINE"  # finalizeAdoptingMode -> deactivateOfflineMode
            self._adoption_at = None
        elif self.mode == "DISCONNECTED" and self._disconnect_at is not None \
                and now - self._disconnect_at >= OFFLINE_DELAY_S:
            self.mode = "OFFLINE_ACTIVE"  # activateOfflineMode
            self.counters["offline_enter"] += 1

    # --------------------------------------------------- offline state machine
    def _offline_on_disconnect(self, now: float) -> None:
        """``OfflineModeManager::onDisconnect``."""
        if self.mode == "ONLINE":
            self.mode = "DISCONNECTED"
            self._disconnect_at = now
        elif self.mode == "RECONNECTING":
            self.mode = "OFFLINE_ACTIVE"
            self._disconnect_at = None
            self.counters["handover_abort"] += 1
        elif self.mode == "ADOPTING":
            self.mode = "DISCONNECTED"
            self._disconnect_at = now
            self._adoption_at = None
            self.counters["handover_abort"] += 1

    def _offline_on_reconnect(self) -> None:
        """``OfflineModeManager::onReconnect``: out of offline mode the epoch counts up."""
        if self.mode == "OFFLINE_ACTIVE":
            self.mode = "RECONNECTING"
            self.active_epoch += 1
        elif self.mode == "DISCONNECTED":
            self.mode = "ONLINE"
            self._disconnect_at = None

    def _validate_ack_epoch(self, epoch: int) -> str | None:
        """``OfflineModeManager::validateServerAckContract``: any epoch >= 1 while online
        (or in the grace period); the board's own ``active_handover_epoch`` after an
        offline period."""
        if epoch == 0:
            return "INVALID_HANDOVER_EPOCH"
        if self.mode in ("ONLINE", "DISCONNECTED"):
            return None
        if self.active_epoch == 0:
            return "MISSING_ACTIVE_SESSION_EPOCH"
        if epoch != self.active_epoch:
            return "HANDOVER_EPOCH_MISMATCH"
        return None

    def _ack_received(self, epoch: int, now: float) -> None:
        """``OfflineModeManager::onServerAckReceived``."""
        if self.mode in ("RECONNECTING", "OFFLINE_ACTIVE"):
            if epoch != self.active_epoch or self.completed_epoch == self.active_epoch:
                self.counters["adoption_noop"] += 1
                return
            self.completed_epoch = self.active_epoch
            self.counters["adoption_delta"] += 1
            self.mode = "ADOPTING"  # enterAdoptingMode: publish every status for the server to adopt
            self._disconnect_at = None
            self._adoption_at = now
            self.counters["adopting_enter"] += 1
            self._all_status()
        elif self.mode == "ADOPTING":
            self.counters["adoption_noop"] += 1
        elif self.mode == "DISCONNECTED":
            self.mode = "ONLINE"
            self._disconnect_at = None

    def _ack_mismatch(self, code: str) -> None:
        """``OfflineModeManager::onServerAckContractMismatch``: counted and reported in
        the heartbeat (metrics) as ``handover_contract_last_reject``."""
        self.counters["handover_contract_reject"] += 1
        self.counters["adoption_noop"] += 1
        self.last_reject = code[:31]
        self.refuse("ack", code)

    def _on_emergency_stop(self, now: float) -> None:
        """``OfflineModeManager::onEmergencyStop``: back to ONLINE, epochs to 0."""
        self.mode = "ONLINE"
        self._disconnect_at = None
        self._adoption_at = None
        self.active_epoch = 0
        self.completed_epoch = 0
        self.last_reject = "NONE"

    def _safe_uncovered(self, now: float) -> None:
        """``setUncoveredActuatorsToSafeState``: actuators without an offline rule."""
        for a in list(self._actuators()):
            if a.gpio in self.offline_rules:
                if a.cfg_state:
                    self._alert(a.gpio, "offline_rule_hold", "Actuator held ON — offline rule coverage active")
            else:
                was_on = a.cfg_state
                self.control_binary(a.gpio, a.config.default_state, now)
                if was_on:
                    self._alert(a.gpio, "safety_forced_off", "No offline rule — forced to default_state"
                                + (" (critical)" if a.config.critical else ""))

    # -------------------------------------------------------------- payloads
    def status_payload(self, a: Actuator) -> str:
        """``ActuatorManager::buildStatusPayload`` (with ``seq`` and ``command_source``)."""
        body = (f'{{"esp_id":"{self.esp_id}","seq":{self._next_seq()},"zone_id":"{self.zone_id}",'
                f'"subzone_id":"{a.config.subzone_id}","ts":{self._unix()},"gpio":{a.gpio},'
                f'"type":"{a.type}","state":{"true" if a.state else "false"},"pwm":{a.pwm},'
                f'"runtime_ms":{a.runtime_ms(self._now)},'
                f'"emergency":"{"active" if a.driver_estop else "normal"}"')
        if a.last_command_source:
            body += f',"command_source":"{a.last_command_source}"'
        return body + "}"

    def alert_payload(self, gpio: int, alert_type: str, message: str) -> str:
        """``ActuatorManager::publishActuatorAlert``: the field is ``alert_type``."""
        return (f'{{"esp_id":"{self.esp_id}","seq":{self._next_seq()},"zone_id":"{self.zone_id}",'
                f'"ts":{self._unix()},"gpio":{gpio},"alert_type":"{alert_type}","message":"{message}"}}')

    def _sensor_payload(self, s: Sensor, wire_type: str, raw: float, value: float, unit: str,
                        quality: str, now: float) -> None:
        """``SensorManager::publishSensorReading``: nothing while disconnected or before
        registration; raw as a signed 32-bit integer, value with 2 decimals, QoS 1."""
        if not self.connected or not self._registration:
            return
        raw_i32 = int(raw) & 0xFFFFFFFF
        if raw_i32 >= 2**31:
            raw_i32 -= 2**32
        body = (f'{{"esp_id":"{self.esp_id}","seq":{self._next_seq()},"zone_id":"{self.zone_id}",'
                f'"subzone_id":"{s.subzone_id}","gpio":{s.gpio},"sensor_type":"{wire_type}",'
                f'"raw":{raw_i32},"value":{scanner.arduino_float(value)},"unit":"{unit}",'
                f'"quality":"{quality}","ts":{self._unix(now)},"time_valid":true,'
                f'"raw_mode":{"true" if s.raw_mode else "false"}')
        if s.onewire_address:
            body += f',"onewire_address":"{s.onewire_address}"'
        cap = capability("current", wire_type)
        if s.i2c_address and cap is not None and cap.i2c:
            body += f',"i2c_address":{s.i2c_address}'
        self._publish(self._topic(f"sensor/{s.gpio}/data"), body + "}", 1)

    def _response(self, gpio: int, command: str, value: float, duration: int, ok: bool, message: str,
                  correlation_id: str, issued_by: str) -> None:
        """``ActuatorManager::buildResponsePayload``."""
        body = (f'{{"esp_id":"{self.esp_id}","seq":{self._next_seq()},"zone_id":"{self.zone_id}",'
                f'"ts":{self._unix()},"gpio":{gpio},"command":"{command}","value":{fixed3(value)},'
                f'"duration":{duration},"success":{"true" if ok else "false"},"message":"{message}"')
        if correlation_id:
            body += f',"correlation_id":"{correlation_id}"'
        if issued_by:
            body += f',"issued_by":"{issued_by}"'
        self._publish(self._topic(f"actuator/{gpio}/response"), body + "}", 1)

    def _config_response(self, kind: str, status: str, *, count: int = 0, message: str,
                         code: str | None = None, item: Any = None, correlation_id: str = "") -> None:
        """``ConfigResponseBuilder::publishSuccess`` / ``publishError``."""
        doc: dict[str, Any] = {"seq": self._next_seq(), "status": status, "type": kind, "count": count,
                               "message": message or ("ok" if status == "success" else "error")}
        if status == "error":
            doc["error_code"] = code or "UNKNOWN_ERROR"
            failed = fit(item, 256)
            if isinstance(failed, dict) and failed:
                doc["failed_item"] = failed
            self.refuse("config", f"{doc['error_code']}: {message}")
        if correlation_id:
            doc["correlation_id"] = correlation_id
        self._publish(self._topic("config_response"), dumps(doc), 1)

    # ---------------------------------------------------------------- routing
    def _route(self, topic: str, payload: bytes, now: float, retained: bool, qos: int) -> None:
        """main.cpp ``routeIncomingMessage``, in its order."""
        if self.transport == "pubsubclient":
            size = packet_size(topic, payload, qos)
            if size > self.spec.packet_limit:
                self.refuse(_what(topic), f"packet of {size} B exceeds MQTT_MAX_PACKET_SIZE {self.spec.packet_limit}")
                return
        elif len(payload) >= IDF_RX_BUFFER:
            self.refuse(_what(topic), f"{len(payload)} B does not fit the 8192 B receive buffer: dropped")
            return
        payload = payload.split(b"\0", 1)[0]  # routeIncomingMessage(const char*, const char*)
        text = scanner.text(payload)
        if topic == self._topic("config"):
            self._config(payload, now)
        elif topic.startswith(self._topic("actuator/")) and topic.endswith("/command"):
            self._actuator_command(topic, payload, text, now)
        elif topic.startswith(self._topic("sensor/")) and topic.endswith("/command"):
            self.refuse("command", "sensor commands (measure) are not modelled")
        elif topic == self._topic("actuator/emergency"):
            self._board_emergency(payload, now)
        elif topic == "kaiser/broadcast/emergency":
            self._broadcast(payload, now)
        elif topic == self._topic("system/command"):
            self._system_command(payload, now)
        elif "/server/status" in topic:
            self._server_status(payload, now)
        elif topic == self._topic("system/heartbeat/ack"):
            self._heartbeat_ack(payload, now)
        else:
            self.refuse(_what(topic), f"not modelled: {topic}")

    # -------------------------------------------------------------- admission
    def _admission(self, subtype: str, system_command: str | None = None, recovery: bool = False) -> str | None:
        """``shouldAcceptCommand`` (command_admission.cpp): None = accepted, else the
        reason code."""
        if subtype != "SYSTEM" and self.system_state == "SAFE_MODE" and subtype != "CONFIG":
            return "SAFETY_LOCKED"
        if not self._registration and not recovery:
            return "REGISTRATION_PENDING"
        for state, reason in (("CONFIG_PENDING_AFTER_RESET", "CONFIG_PENDING_AFTER_RESET"),
                              ("PENDING_APPROVAL", "PENDING_APPROVAL")):
            if self.system_state == state:
                if recovery or subtype == "CONFIG" or (subtype == "SYSTEM" and system_command in PENDING_ALLOWLIST):
                    return None
                return reason
        if self.system_state in ("SAFE_MODE", "ERROR", "CONFIG_PENDING_AFTER_RESET"):
            if recovery or subtype == "CONFIG" or (subtype == "SYSTEM" and system_command in PENDING_ALLOWLIST):
                return None
            return "RUNTIME_DEGRADED"
        return None

    # ------------------------------------------------------------ heartbeat ack
    def _heartbeat_ack(self, payload: bytes, now: float) -> None:
        """main.cpp heartbeat ack branch: ``status`` and ``handover_epoch`` present,
        ``handover_epoch.is<uint32_t>()`` and not 0, then the offline epoch contract."""
        try:
            doc = ajson.parse(payload, 256)
        except ajson.JsonError as e:
            self.refuse("ack", f"parse error {e.code}")
            return
        if not isinstance(doc, dict) or "status" not in doc:
            self._ack_mismatch("MISSING_ACK_STATUS")
            return
        if "handover_epoch" not in doc:
            self._ack_mismatch("MISSING_HANDOVER_EPOCH")
            return
        raw_epoch = doc["handover_epoch"]
        if not ajson.is_uint32(raw_epoch):
            self._ack_mismatch("INVALID_HANDOVER_EPOCH_TYPE")
            return
        epoch = int(raw_epoch)
        if epoch == 0:
            self._ack_mismatch("INVALID_HANDOVER_EPOCH")
            return
        reject = self._validate_ack_epoch(epoch)
        if reject:
            self._ack_mismatch(reject)
            return
        self._registration = True  # confirmRegistration
        self._last_ack = now
        self._ack_received(epoch, now)
        self._timeout_triggered = False
        status = ajson.or_str(doc, "status", "unknown")
        if status in ("approved", "online"):
            self.nvs["approved"] = True
            if self.system_state == "CONFIG_PENDING_AFTER_RESET":
                return
            if self.system_state in ("PENDING_APPROVAL", "ERROR"):
                self.system_state = "OPERATIONAL"
        elif status == "pending_approval":
            self.nvs["approved"] = False
            if self.system_state == "CONFIG_PENDING_AFTER_RESET":
                return
            self.system_state = "PENDING_APPROVAL"
        elif status == "rejected":
            self.nvs["approved"] = False
            self.system_state = "ERROR"
            self.refuse("ack", "status rejected: board in ERROR state")
        # "error" and anything else: logged only

    # ------------------------------------------------------------ server status
    def _server_status(self, payload: bytes, now: float) -> None:
        """main.cpp server/status branch (SAFETY-P5)."""
        try:
            doc = ajson.parse(payload, 256)
        except ajson.JsonError as e:
            self.refuse("server_status", f"parse error {e.code}")
            return
        status = ajson.or_str(doc, "status", "unknown")
        if status == "offline":
            reason = ajson.or_str(doc, "reason", "unknown")
            since = now - (self._last_connect if self._last_connect is not None else now)
            if (reason == "unexpected_disconnect" and self._reconnects > 0 and since < STALE_RETAIN_S
                    and not self._registration):
                self.refuse("server_status", "offline (unexpected_disconnect) right after a reconnect, "
                            "before the ack: taken for a stale retained will, ignored")
                return
            if not self.offline_rules:
                self.safe_state_all(now)
            self._offline_on_disconnect(now)
        elif status == "online":
            if self.mode in ("OFFLINE_ACTIVE", "DISCONNECTED"):
                self._offline_on_reconnect()
        else:
            self.refuse("server_status", f"unknown status {status!r}")

    # ------------------------------------------------------------------ config
    def _config(self, payload: bytes, now: float) -> None:
        """main.cpp config branch + ``processConfigUpdateQueue``."""
        meta = _intent_metadata(payload)
        corr = meta.get("correlation_id", "")
        if not corr:
            self._config_response("system", "error", code="CONTRACT_MISSING_CORRELATION",
                                  message="Config contract violation: required correlation_id missing",
                                  correlation_id=f"fw_{self.esp_id}_{self.millis()}_{self._next_fallback()}")
            return
        reason = self._admission("CONFIG")
        if reason:
            self.refuse("config", reason)
            return
        if len(payload) >= CONFIG_PAYLOAD_MAX:
            self._config_response("system", "error", code="PAYLOAD_TOO_LARGE", correlation_id=corr,
                                  message=f"[CONFIG] Payload too large: {len(payload)} bytes, max={CONFIG_PAYLOAD_MAX}")
            return
        try:
            doc = ajson.parse(payload, CONFIG_DOC, zero_copy=True)
        except ajson.JsonError as e:
            self._config_response("system", "error", code="JSON_PARSE_ERROR", correlation_id=corr,
                                  message=f"Config JSON parse failed: {e.code}")
            return
        root = doc if isinstance(doc, dict) else {}
        gen = meta.get("generation", 0) or (ajson.or_int(root, "generation") & 0xFFFFFFFF)
        scopes = {"sensor": "sensors" in root, "act": "actuators" in root, "off": "offline_rules" in root}
        reject = dict.fromkeys(scopes, False)
        if gen > 0:
            for k, present in scopes.items():
                reject[k] = present and gen <= self.nvs[f"applied_gen_{k}"]
            if all(reject[k] or not p for k, p in scopes.items()) and gen <= self.nvs["applied_gen"]:
                self._config_response("system", "error", code="STALE_SCOPE", correlation_id=corr,
                                      message=f"Config generation rejected: incoming={gen} applied={self.nvs['applied_gen']}")
                return
        sensors_ok = True if reject["sensor"] else self._sensor_config(root, corr, now)
        actuators_ok = True if reject["act"] else self._actuator_config(root, corr, now)
        offline_ok = True if reject["off"] else self._offline_rules(root)
        persisted = sensors_ok and actuators_ok and offline_ok
        if not persisted:
            self._config_response("system", "error", code="COMMIT_FAILED", correlation_id=corr,
                                  message="Config apply/persist failed")
        names = {"sensor": "STALE_SENSOR_SCOPE", "act": "STALE_ACTUATOR_SCOPE", "off": "STALE_OFFLINE_SCOPE"}
        for k, r in reject.items():
            if r:
                self.refuse("config", names[k])
        if persisted and gen > 0:
            self.nvs["applied_gen"] = gen
            for k, present in scopes.items():
                if present and not reject[k]:
                    self.nvs[f"applied_gen_{k}"] = gen
        if persisted and self.system_state == "CONFIG_PENDING_AFTER_RESET" and self._runtime_ready():
            self.system_state = "OPERATIONAL" if self.nvs["approved"] else "PENDING_APPROVAL"

    def _next_fallback(self) -> int:
        self._fallback_ids += 1
        return self._fallback_ids

    def _offline_rules(self, root: dict[str, Any]) -> bool:
        """``OfflineModeManager::parseOfflineRules`` (rules are stored, not evaluated
        by the twin): absent keeps the rules, a non-array fails."""
        if "offline_rules" not in root:
            return True
        rules = root["offline_rules"]
        if not isinstance(rules, list):
            return False
        gpios: list[int] = []
        for r in rules[:MAX_OFFLINE_RULES]:
            g = r.get("actuator_gpio") if isinstance(r, dict) else None
            gpios.append(g if isinstance(g, int) and not isinstance(g, bool) and 0 <= g <= 255 else 255)
        self.offline_rules = [g for g in gpios if g != 255]
        self.nvs["offline_rules"] = list(self.offline_rules)
        return True

    def _sensor_config(self, root: dict[str, Any], corr: str, now: float) -> bool:
        """main.cpp ``handleSensorConfig``: one aggregated response (success,
        partial_success or error with up to 10 failures)."""
        if "sensors" not in root:
            return True
        items = root["sensors"]
        if not isinstance(items, list):
            self._config_response("sensor", "error", code="MISSING_FIELD", correlation_id=corr,
                                  message="Sensor config 'sensors' field is not an array")
            return False
        if not items:
            self._config_response("sensor", "success", count=0, message="No sensors configured",
                                  correlation_id=corr)
            return True
        failures: list[dict[str, Any]] = []
        ok = 0
        for item in items:
            failure = self._sensor_item(item if isinstance(item, dict) else {})
            if failure is None:
                ok += 1
            elif len(failures) < MAX_CONFIG_FAILURES:
                failures.append(failure)
        fail = len(items) - ok
        status = "success" if fail == 0 else ("partial_success" if ok else "error")
        message = (f"Configured {ok} item(s) successfully" if fail == 0 else
                   f"{ok} configured, {fail} failed" if ok else f"All {fail} item(s) failed to configure")
        doc: dict[str, Any] = {"seq": self._next_seq(), "status": status, "type": "sensor", "count": ok,
                               "failed_count": fail, "message": message}
        if failures:
            doc["failures"] = failures
        if corr:
            doc["correlation_id"] = corr
        for f in failures:
            self.refuse("config", f"{f['error']}: {f.get('detail', '')}")
        self._publish(self._topic("config_response"), dumps(doc), 1)
        return fail == 0

    def _sensor_item(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """main.cpp ``parseAndConfigureSensorWithTracking``: None on success, else the
        failure entry."""
        def failure(gpio: int, name: str, detail: str) -> dict[str, Any]:
            return {"type": "sensor", "gpio": gpio, "error_code": ERR.get(name, 1041), "error": name,
                    "detail": detail}

        if "gpio" not in obj:
            return failure(0, "MISSING_FIELD", "Missing required field 'gpio'")
        g = ajson.extract_int(obj, "gpio")
        if g is None:
            return failure(0, "TYPE_MISMATCH", "Field 'gpio' must be an integer")
        gpio = g & 0xFF
        if "sensor_type" not in obj:
            return failure(gpio, "MISSING_FIELD", "Missing required field 'sensor_type'")
        st = ajson.extract_string(obj, "sensor_type")
        if st is None:
            return failure(gpio, "TYPE_MISMATCH", "Field 'sensor_type' must be a string")
        st = st.lower()
        if "sensor_name" not in obj:
            return failure(gpio, "MISSING_FIELD", "Missing required field 'sensor_name'")
        name = ajson.extract_string(obj, "sensor_name")
        if name is None:
            return failure(gpio, "TYPE_MISMATCH", "Field 'sensor_name' must be a string")
        i2c = ajson.extract_int(obj, "i2c_address")
        active = ajson.extract_bool(obj, "active")
        raw_mode = ajson.extract_bool(obj, "raw_mode")
        mode = ajson.extract_string(obj, "operating_mode")
        interval = ajson.extract_int(obj, "measurement_interval_seconds")
        s = Sensor(gpio=gpio, sensor_type=st, name=name, active=True if active is None else active,
                   raw_mode=True if raw_mode is None else raw_mode,
                   subzone_id=ajson.extract_string(obj, "subzone_id") or "",
                   onewire_address=ajson.extract_string(obj, "onewire_address") or "",
                   i2c_address=(i2c & 0xFF) if i2c is not None else 0,
                   measurement_interval_s=min(max(interval, 1), 300) if interval is not None else 30,
                   operating_mode=mode if mode in ("continuous", "on_demand", "paused", "scheduled") else "continuous")
        cap = capability("current", st)
        # ConfigManager::validateSensorConfig: I2C types skip the gpio checks
        if not (cap and cap.i2c) and (not st or gpio == 255 or gpio > 39):
            owner = self.pins.owner.get(gpio, "")
            if owner and not owner.startswith("bus/"):
                return failure(gpio, "GPIO_CONFLICT", f"GPIO {gpio} reserved by {owner}")
            return failure(gpio, "VALIDATION_FAILED", f"Sensor validation failed for GPIO {gpio}")
        if not s.active:
            self._remove_sensor(s)
            return None
        if not self._configure_sensor(s):
            owner = self.pins.owner.get(gpio, "")
            if owner and not owner.startswith("bus/"):
                return failure(gpio, "GPIO_CONFLICT", f"GPIO {gpio} already used by {owner}")
            return failure(gpio, "CONFIG_FAILED", f"Failed to configure sensor on GPIO {gpio}")
        return None

    def _configure_sensor(self, s: Sensor) -> bool:
        """``SensorManager::configureSensor`` (current): several sensors per gpio
        (OneWire ROM codes, I2C addresses, multi-value types); a ds18b20 needs its
        16-hex-digit ROM code and all ds18b20 share one OneWire bus pin."""
        if s.gpio == 255:
            return False
        cap = capability("current", s.sensor_type)
        is_i2c = cap is not None and cap.i2c
        if s.gpio == 0 and not is_i2c:
            return False
        eff_i2c = s.i2c_address or (cap.i2c_address if cap else 0)
        existing = self._find_sensor(s.gpio, s.onewire_address, eff_i2c, s.sensor_type if is_i2c else "")
        if existing is None and is_i2c and cap is not None:
            for other in self.sensor_list:
                ocap = capability("current", other.sensor_type)
                if (other.gpio == s.gpio and ocap and ocap.i2c and other.i2c_address == eff_i2c
                        and ocap.device_type == cap.device_type and other.sensor_type != s.sensor_type):
                    same = self._find_sensor(s.gpio, "", eff_i2c, s.sensor_type)
                    s.i2c_address = eff_i2c
                    if same is not None:
                        self.sensor_list[self.sensor_list.index(same)] = s
                    elif len(self.sensor_list) >= self.spec.max_sensors:
                        return False
                    else:
                        self.sensor_list.append(s)
                    self._persist_sensor(s)
                    return True
        if existing is not None:
            self.sensor_list[self.sensor_list.index(existing)] = s
            self._persist_sensor(s)
            return True
        if len(self.sensor_list) >= self.spec.max_sensors:
            return False
        if is_i2c and cap is not None:
            for other in self.sensor_list:
                ocap = capability("current", other.sensor_type)
                if other.active and ocap and ocap.i2c and other.i2c_address == eff_i2c \
                        and ocap.device_type != cap.device_type:
                    return False  # I2C address conflict
            s.i2c_address = eff_i2c
        elif cap is not None and "ds18b20" in s.sensor_type:
            rom = s.onewire_address
            if len(rom) != 16 or any(c not in "0123456789abcdefABCDEF" for c in rom):
                return False
            if any(o.onewire_address == rom for o in self.sensor_list):
                return False  # duplicate ROM code
            owner = self.pins.owner.get(s.gpio, "")
            if owner and not owner.startswith("bus/onewire/"):
                return False
            if self._onewire_pin is not None and self._onewire_pin != s.gpio:
                return False  # single-bus architecture
            if self._onewire_pin is None:
                if not self.pins.request(s.gpio, f"bus/onewire/{s.gpio}"):
                    return False
                self._onewire_pin = s.gpio
        else:
            if not self.pins.available(s.gpio) or not self.pins.request(s.gpio, "sensor"):
                return False
        self.sensor_list.append(s)
        self._persist_sensor(s)
        return True

    def _find_sensor(self, gpio: int, onewire: str, i2c: int, sensor_type: str) -> Sensor | None:
        """``SensorManager::findSensorConfig``."""
        for s in self.sensor_list:
            if s.gpio != gpio:
                continue
            if onewire and s.onewire_address != onewire:
                continue
            if i2c and s.i2c_address != i2c:
                continue
            if sensor_type and s.sensor_type != sensor_type:
                continue
            return s
        return None

    def _persist_sensor(self, s: Sensor) -> None:
        key = (s.gpio, s.sensor_type, s.onewire_address, s.i2c_address)
        self.nvs["sensors"][key] = Sensor(**vars(s))

    def _remove_sensor(self, s: Sensor) -> None:
        """``SensorManager::removeSensor(gpio, onewire_address, i2c_address)``."""
        target = self._find_sensor(s.gpio, s.onewire_address, s.i2c_address, "")
        if target is None:
            return
        self.sensor_list.remove(target)
        if not self.has_sensor(s.gpio) and self.pins.owner.get(s.gpio) != "system":
            self.pins.release(s.gpio)
            if self._onewire_pin == s.gpio:
                self._onewire_pin = None
        self.nvs["sensors"] = {k: v for k, v in self.nvs["sensors"].items()
                               if not (k[0] == target.gpio and k[1] == target.sensor_type
                                       and k[2] == target.onewire_address)}

    def _actuator_config(self, root: dict[str, Any], corr: str, now: float) -> bool:
        """``ActuatorManager::handleActuatorConfig`` (current): a missing or non-array
        ``actuators`` is silently fine; an empty one answers success."""
        items = root.get("actuators")
        if not isinstance(items, list):
            return True
        if not items:
            self._config_response("actuator", "success", count=0, message="No actuators configured",
                                  correlation_id=corr)
            return True
        configured = 0
        for item in items:
            obj = item if isinstance(item, dict) else {}
            failed = item if isinstance(item, dict) else None
            cfg, code, msg = parse_actuator(obj, current=True)
            if cfg is None:
                self._config_response("actuator", "error", code=code, message=msg, item=failed, correlation_id=corr)
                continue
            if not self._configure_actuator(cfg, now):
                self._config_response("actuator", "error", code="UNKNOWN_ERROR", item=failed, correlation_id=corr,
                                      message=f"Failed to configure actuator on GPIO {cfg.gpio} "
                                              f"type={cfg.actuator_type} name={cfg.actuator_name} heap=150000")
                continue
            configured += 1
        if configured == len(items):
            self._config_response("actuator", "success", count=configured, correlation_id=corr,
                                  message=f"Configured {configured} actuator(s) successfully")
            return True
        return False

    def _configure_actuator(self, cfg: ActuatorConfig, now: float) -> bool:
        """``ActuatorManager::configureActuator`` (current, R20-P11): an unchanged item
        is skipped (its latch and state stay), a name/flag change is applied in place
        (latch stays), a new type or aux_gpio re-creates the actuator (latch gone)."""
        if cfg.gpio == 255 or not cfg.actuator_type:
            return False
        if not cfg.active:
            self.remove_actuator(cfg.gpio, now)
            return True
        if self.has_sensor(cfg.gpio):
            return False
        existing = self._find(cfg.gpio)
        if existing is not None:
            prev = existing.config
            structural = prev.actuator_type != cfg.actuator_type or prev.aux_gpio != cfg.aux_gpio
            if not structural:
                if prev.soft_key() == cfg.soft_key():
                    return True
                existing.config = cfg
                self._persist_actuators()
                self._status(existing)
                return True
            drv.set_binary(existing, False, now, legacy=False)
            self.remove_actuator(cfg.gpio, now)
        return self._new_actuator(cfg, now)

    # --------------------------------------------------------- actuator command
    def _actuator_command(self, topic: str, payload: bytes, text: str, now: float) -> None:
        """main.cpp actuator branch (admission, then the queue) and
        ``ActuatorManager::handleActuatorCommand``."""
        meta = _intent_metadata(payload)
        corr = meta.get("correlation_id") or self._fallback_id("corr")
        reason = self._admission("ACTUATOR")
        if reason:
            self.refuse("command", reason)
            self._admission_rejected(topic, payload, corr, reason)
            return
        gpio = scanner.gpio_from_topic(topic)
        if gpio == 255:
            self.refuse("command", f"no gpio in topic {topic}")
            return
        command = scanner.utf8(scanner.extract_string(text, "command"))
        value = scanner.extract_float(text, "value", 0.0)
        duration = scanner.extract_uint32(text, "duration", 0)
        corr_id = scanner.utf8(scanner.extract_string(text, "correlation_id"))
        issued_by = scanner.utf8(scanner.extract_string(text, "issued_by")) or "system:unknown"
        a = self._find(gpio)
        if a is None:
            self.refuse("command", "ACTUATOR_NOT_CONFIGURED")
            self._response(gpio, command, value, duration, False,
                           f"Actuator not configured on GPIO {gpio}. Configure via API first.", corr_id, issued_by)
            return
        if a.emergency_stopped:
            self.refuse("command", "EMERGENCY_STOP_ACTIVE")
            self._alert(gpio, "emergency_stop", "Actuator in emergency stop state. Clear emergency first.")
            self._status(a)
            self._response(gpio, command, value, duration, False,
                           "Actuator in emergency stop state. Clear emergency first.", corr_id, issued_by)
            return
        a.duration_end_ms = 0
        a.last_command_source = issued_by
        verb = command.upper()
        ok = False
        internal_status = True
        message = "Command executed"
        if verb == "ON":
            internal_status = not a.cfg_state
            ok = self.control_binary(gpio, True, now)
            if ok and duration > 0:
                a.duration_end_ms = (self.millis(now) + (duration * 1000) % 2**32) % 2**32
            if not ok:
                message = "Failed to turn actuator ON"
        elif verb == "OFF":
            internal_status = a.cfg_state
            ok = self.control_binary(gpio, False, now)
            if not ok:
                message = "Failed to turn actuator OFF"
        elif verb == "PWM":
            ok = self.control_value(gpio, value, now)
            if not ok:
                message = "Failed to set PWM value"
        elif verb == "TOGGLE":
            ok = self.control_binary(gpio, not a.cfg_state, now)
            if not ok:
                message = "Failed to toggle actuator"
        else:
            message = f"Unknown command: {command}"
        if not ok:
            self.refuse("command", f"UNKNOWN_COMMAND: {command}" if verb not in ("ON", "OFF", "PWM", "TOGGLE")
                        else ("VALUE_OUT_OF_RANGE" if verb == "PWM" else "COMMAND_FAILED"))
        self._response(gpio, command, value, duration, ok, message, corr_id, issued_by)
        if ok and not internal_status:
            self._status(a)

    def _admission_rejected(self, topic: str, payload: bytes, corr: str, reason: str) -> None:
        """main.cpp ``publishActuatorAdmissionRejectedResponse``: a response even before
        registration (responses pass the gate)."""
        prefix = self._topic("actuator/")
        token = topic[len(prefix):-len("/command")] if topic.startswith(prefix) else ""
        if not token or not token.isdigit() or not token.isascii() or int(token) > 255:
            return
        gpio = int(token)
        try:
            doc = ajson.parse(payload, 256)
        except ajson.JsonError:
            doc = {}
        command = ajson.or_str(doc, "command", "UNKNOWN")
        value = scanner.to_float32(ajson.or_float(doc, "value", 0.0))
        duration = ajson.or_int(doc, "duration", 0) & 0xFFFFFFFF
        issued_by = ajson.or_str(doc, "issued_by", "")
        body: dict[str, Any] = {"esp_id": self.esp_id, "seq": self._next_seq(), "zone_id": self.zone_id,
                                "ts": self._unix(), "gpio": gpio, "command": command,
                                "value": _json_float(value), "duration": duration, "success": False,
                                "message": f"Rejected before execution (reason_code={reason})",
                                "correlation_id": corr}
        if issued_by:
            body["issued_by"] = issued_by
        self._publish(self._topic(f"actuator/{gpio}/response"), dumps(body), 1)

    # ---------------------------------------------------------------- emergency
    def _token_rejects(self, key: str, given: str, what: str) -> bool:
        """Token check (fail-open when none is stored, fail-closed in production)."""
        stored = self.nvs.get(key, "")
        if stored and given != stored:
            self.refuse("emergency", f"UNAUTHORIZED: {what} token mismatch")
            return True
        if not stored and self.production:
            self.counters["emergency_rejected_no_token"] += 1
            self.refuse("emergency", f"NO_TOKEN_CONFIGURED: production build refuses {what} emergencies "
                        "while no token is set")
            return True
        return False

    def _board_emergency(self, payload: bytes, now: float) -> None:
        """main.cpp ESP-specific emergency branch: only ``command`` is read."""
        try:
            doc = ajson.parse(payload, 256)
        except ajson.JsonError as e:
            self.refuse("emergency", f"EMERGENCY_PARSE_ERROR: {e.code}")
            return
        d = doc if isinstance(doc, dict) else {}
        command = ajson.as_string(d.get("command"))
        auth = ajson.as_string(d.get("auth_token"))
        stored = self.nvs.get("emergency_auth", "")
        if stored and auth != stored:
            self.refuse("emergency", "UNAUTHORIZED: invalid auth_token")
            self._publish(self._topic("actuator/emergency/error"),
                          f'{{"error":"unauthorized","message":"Invalid auth_token","seq":{self._next_seq()}}}', 1)
            return
        if not stored and self.production:
            self.counters["emergency_rejected_no_token"] += 1
            self.refuse("emergency", "NO_TOKEN_CONFIGURED: production build refuses emergencies while no token is set")
            return
        meta = _intent_metadata(payload)
        corr = meta.get("correlation_id") or self._fallback_id("corr")
        if command == "emergency_stop":
            self.emergency_stop_all(now, "MQTT emergency command (Core 0 notify)")
            gpio_count = self.actuator_count
            self._publish(self._topic("actuator/emergency/ack"),
                          f'{{"ts":{self._unix(now)},"esp_id":"{self.esp_id}","correlation_id":"{corr}",'
                          f'"command":"emergency_stop","gpio_count":{gpio_count},"outcome":"executed",'
                          f'"seq":{self._next_seq()}}}', 1)
        elif command == "clear_emergency":
            if self.clear_emergency(now):
                self.resume_operation()
                self._publish(self._topic("actuator/emergency/response"),
                              f'{{"status":"emergency_cleared","timestamp":{self.millis(now)},'
                              f'"seq":{self._next_seq()}}}', 1)
                self._publish(self._topic("actuator/recovery_confirm"),
                              f'{{"ts":{self._unix(now)},"esp_id":"{self.esp_id}","correlation_id":"{corr}",'
                              f'"command":"clear_emergency","state":"cleared","seq":{self._next_seq()}}}', 1)
            else:
                self.refuse("emergency", "EMERGENCY_CLEAR_REJECTED: safety verification failed "
                            "(less than 5 s after the stop)")
                self._publish(self._topic("actuator/emergency/error"),
                              f'{{"error":"clear_failed","message":"Safety verification failed",'
                              f'"seq":{self._next_seq()}}}', 1)
        else:
            self.refuse("emergency", f"VALIDATION_FAIL: unsupported emergency command {command}")

    def _broadcast(self, payload: bytes, now: float) -> None:
        """main.cpp broadcast branch + ``validateBroadcastEmergencyContract``."""
        try:
            doc = ajson.parse(payload, 512)
        except ajson.JsonError as e:
            self.refuse("emergency", f"EMERGENCY_PARSE_ERROR: {e.code}: no stop")
            return
        root = doc if isinstance(doc, dict) else {}
        for field in ("command", "action", "auth_token", "reason", "issued_by", "timestamp"):
            if field in root and not isinstance(root[field], str):
                if field in ("command", "auth_token"):
                    # classifyEmergencyContractMismatch: CRITICAL_UNKNOWN -> fail-safe stop
                    self.refuse("emergency", f"non-string field {field}: fail-safe stop")
                    self.emergency_stop_all(now, "Broadcast emergency critical unknown contract state")
                    return
                self.refuse("emergency", f"non-string field {field}")
                return
        command = root.get("command")
        action = root.get("action")
        if command is not None and action is not None and command != action:
            self.refuse("emergency", "CONFLICTING_COMMAND_FIELDS: fail-safe stop")
            self.emergency_stop_all(now, "Broadcast emergency critical unknown contract state")
            return
        command = command if command is not None else action
        if not command:
            self.refuse("emergency", "MISSING_COMMAND_FIELD")
            return
        if command not in ("stop_all", "emergency_stop"):
            self.refuse("emergency", f"UNKNOWN_COMMAND_VALUE: {command}")
            return
        given = root.get("auth_token", "")
        if self._token_rejects("broadcast_em_tok", given if isinstance(given, str) else "", "broadcast"):
            return
        self.emergency_stop_all(now, "Broadcast emergency (God-Kaiser)")

    # ------------------------------------------------------------ system commands
    def _system_command(self, payload: bytes, now: float) -> None:
        """main.cpp system command branch."""
        topic = self._topic("system/command/response")
        try:
            doc = ajson.parse(payload, 256)
        except ajson.JsonError as e:
            self.refuse("system", f"JSON_PARSE_ERROR: {e.code}")
            body = {"command": "", "success": False, "esp_id": self.esp_id, "error": "JSON_PARSE_ERROR",
                    "message": f"System command JSON parse failed: {e.code}", "reason_code": "JSON_PARSE_ERROR",
                    "ts": self._unix(now), "seq": self._next_seq(),
                    "correlation_id": _intent_metadata(payload).get("correlation_id") or self._fallback_id("corr")}
            self._publish(topic, dumps(body), 1)
            return
        d = doc if isinstance(doc, dict) else {}
        command = ajson.as_string(d.get("command"))
        reason = self._admission("SYSTEM", command)
        if reason:
            self.refuse("system", f"{command}: {reason}")
            self._publish(topic, dumps({"command": command, "success": False, "esp_id": self.esp_id,
                                        "error": reason, "reason_code": reason,
                                        "state": "CONFIG_PENDING_AFTER_RESET", "ts": self._unix(now),
                                        "seq": self._next_seq()}), 1)
            return
        base: dict[str, Any] = {"command": command, "esp_id": self.esp_id}
        if command == "set_emergency_token":
            token_type = ajson.or_str(d, "token_type", "esp")
            token = ajson.as_string(d.get("token"))
            if not token or len(token.encode()) > 64:
                base.update(success=False, error="Token must be 1-64 characters")
                self.refuse("system", "set_emergency_token: token must be 1-64 characters")
            elif token_type == "broadcast":
                self.nvs["broadcast_em_tok"] = token
                base.update(success=True, token_type="broadcast", message="Broadcast emergency token updated")
            else:
                self.nvs["emergency_auth"] = token
                base.update(success=True, token_type="esp", message="ESP emergency token updated")
        elif command == "exit_safe_mode":
            if not self.clear_emergency(now):  # result ignored by the firmware: it always answers success
                self.refuse("system", "exit_safe_mode: safety verification failed (less than 5 s after the stop), "
                            "latch kept although the answer says success")
            base.update(success=True, message="Safe mode deactivated - actuators can be controlled")
        elif command == "safe_mode":
            self.emergency_stop_all(now, "Safe mode activated via MQTT command")
            base.update(success=True, message="Safe mode activated - all actuators stopped")
        elif command == "factory_reset" and ajson.or_bool(d, "confirm"):
            # WiFi config cleared, restart: the board comes up as an access point
            self._publish(topic, f'{{"status":"factory_reset_initiated","esp_id":"{self.esp_id}",'
                                 f'"seq":{self._next_seq()}}}', 1)
            self.refuse("system", "factory_reset: the board restarts into provisioning (AP mode), off MQTT")
            self.factory_reset = True
            self._lose_connection(now)
            return
        elif command in ("diagnostics", "get_config"):
            base.update(success=True, state=STATES.get(self.system_state, 9), uptime=self.uptime(now),
                        sensor_count=sum(1 for s in self.sensor_list if s.active),
                        actuator_count=self.actuator_count, zone_id=self.zone_id)
        elif command == "set_log_level":
            level = ajson.as_string(d.get("level")).upper() if "level" in d else ""
            if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                base.update(success=True, level=level, message=f"Log level changed to {level}", persisted=True)
            else:
                base.update(success=False, error="Invalid log level",
                            message="Valid levels: DEBUG, INFO, WARNING, ERROR, CRITICAL", requested_level=level)
        elif command == "status":
            base.update(success=True, state=STATES.get(self.system_state, 9), uptime=self.uptime(now),
                        heap_free=150000, wifi_rssi=-58,
                        sensor_count=sum(1 for s in self.sensor_list if s.active),
                        actuator_count=self.actuator_count, zone_id=self.zone_id,
                        zone_assigned=self.zone_assigned)
        else:
            base.update(success=False, error="Unknown command")
            self.refuse("system", f"unknown or unmodelled system command {command}")
        base.update(ts=self._unix(now), seq=self._next_seq())
        self._publish(topic, dumps(base), 1)


def gate_allows(topic: str) -> bool:
    """``MQTTClient::publish`` registration gate: before the first valid ack only
    heartbeats, responses, ``config_response``, zone/subzone acks, system command
    responses and ``*/error`` topics leave the board."""
    heartbeat = "/system/heartbeat" in topic and "/heartbeat/ack" not in topic
    response = (("/actuator/" in topic or "/sensor/" in topic) and "/response" in topic)
    system = any(t in topic for t in ("/config_response", "/zone/ack", "/subzone/ack", "/system/command/response"))
    return heartbeat or response or system or "/error" in topic


def _intent_metadata(payload: bytes) -> dict[str, Any]:
    """``extractIntentMetadataFromPayload``: top-level ``correlation_id`` /
    ``generation`` (a non-empty string / an int), else the same under ``data``;
    the id is kept to 63 bytes. {} when the payload does not parse."""
    try:
        doc = ajson.parse(payload)
    except ajson.JsonError:
        return {}
    if not isinstance(doc, dict):
        return {}
    data = doc.get("data") if isinstance(doc.get("data"), dict) else None
    corr = ajson.or_str(doc, "correlation_id", "")
    if not corr and data is not None:
        corr = ajson.or_str(data, "correlation_id", "")
    gen = ajson.or_int(doc, "generation", 0)
    if gen == 0 and data is not None:
        gen = ajson.or_int(data, "generation", 0)
    corr_b = corr.encode("utf-8", "surrogateescape")[:63]
    return {"correlation_id": corr_b.decode("utf-8", "ignore"), "generation": gen & 0xFFFFFFFF}


def _json_float(v: float) -> float | int:
    return int(v) if v == int(v) else float(f"{v:.9g}")


def _what(topic: str) -> str:
    from engine.firmware.board import _kind_of

    return _kind_of(topic)
