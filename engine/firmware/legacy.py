"""The legacy generation of El Trabajante (commit a464a94b, late 2025).

Every rule cites the firmware function it comes from (``src/`` of that commit).
In short, a legacy board:

- has no registration gate, no heartbeat ack, no ``server/status`` handling and no
  safe state of its own: it runs on whatever the server last told it;
- publishes through PubSubClient: always QoS 0, and everything the code sends
  "with QoS 1" goes out **retained** (``MQTTClient::publish``:
  ``mqtt_.publish(topic, payload, qos == 1)`` passes the QoS as the retain flag);
- subscribes once, in ``setup()``, with QoS 0 and a clean session: after a broker
  reconnect it receives nothing until it reboots (``MQTTClient::connectToBroker``
  never resubscribes);
- drops any packet larger than ``MQTT_MAX_PACKET_SIZE`` (2048 B esp32dev, 1024 B
  XIAO) and parses each config half in its own 4096 B ArduinoJson document;
- routes ``actuator/emergency`` to the actuator command handler (the topic starts
  with the command prefix ``.../actuator/``), which finds no gpio in it and drops
  it: the per-board stop and its ``clear_emergency`` never reach the safety code
  (main.cpp ``setup()`` MQTT callback). Only the broadcast stops a legacy board,
  and only a config push (which re-creates every actuator it names) or a reboot
  clears the latch;
- forgets its actuators on reboot (``setup()`` loads only sensors from NVS).
"""

from __future__ import annotations

from typing import Any

from engine.codec import Outgoing
from engine.firmware import actuators as drv
from engine.firmware import ajson, scanner
from engine.firmware.actuators import Actuator, ActuatorConfig
from engine.firmware.board import Board, Sensor, dumps, fit, fixed3
from engine.firmware.hardware import server_type

HEARTBEAT_S = 60.0          # MQTTClient::HEARTBEAT_INTERVAL_MS
CONFIG_DOC = 4096           # handleSensorConfig / ActuatorManager::handleActuatorConfig
SMALL_DOC = 256             # emergency, broadcast, system command documents
OFFLINE_BUFFER = 100        # MQTTClient::MAX_OFFLINE_MESSAGES
NVS_SENSORS_AT_BOOT = 10    # setup(): SensorConfig sensors[10]


def packet_size(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of an MQTT PUBLISH packet as PubSubClient reads it into its buffer."""
    rem = 2 + len(topic.encode()) + len(payload) + (2 if qos else 0)
    n = 1
    while rem >= 128 ** n:
        n += 1
    return 1 + n + rem


class LegacyBoard(Board):
    """A board running legacy El Trabajante (a464a94b)."""

    generation = "legacy"

    def _init_nvs(self, emergency_token: str | None) -> None:
        if emergency_token is not None:
            self.nvs["emergency_auth"] = emergency_token
        self.nvs["sensors"] = []

    def _boot_state(self, now: float) -> None:
        self._subscribed = False
        self._last_hb_ms = 0
        self._offline: list[tuple[str, str, int]] = []
        self._breaker_failures = 0
        self._will_ts = 0
        # OneWireBusManager::begin() reserves the default OneWire pin at boot
        self.pins.request(self.spec.onewire_pin, "sensor")
        # setup(): configManager.loadSensorConfig(sensors, 10, ...) then configureSensor each;
        # actuators are not loaded ("waiting for MQTT configs")
        for cfg in list(self.nvs.get("sensors", []))[:NVS_SENSORS_AT_BOOT]:
            self._configure_sensor(Sensor(**vars(cfg)))

    @property
    def registered(self) -> bool:
        """Legacy firmware has no registration: it is operational once connected."""
        return self.connected

    @property
    def safe_state(self) -> bool:
        """Legacy firmware never drives its actuators to a safe state by itself."""
        return False

    # ------------------------------------------------------------- transport
    def subscriptions(self) -> list[tuple[str, int]]:
        """main.cpp ``setup()``: six topics, ``subscribe(topic)`` = QoS 0; gone after a
        reconnect (clean session, never resubscribed)."""
        if not (self.connected and self._subscribed):
            return []
        zone_k = self.kaiser_id or "god"
        return [(self._topic("system/command"), 0), (self._topic("config"), 0),
                ("kaiser/broadcast/emergency", 0), (self._topic("actuator/+/command"), 0),
                (self._topic("actuator/emergency"), 0),
                (f"kaiser/{zone_k}/esp/{self.esp_id}/zone/assign", 0)]

    def will(self) -> Outgoing:
        """``MQTTClient::connectToBroker``: ``system/will``, QoS 1, retained, with the
        ``millis()`` of the connect."""
        body = f'{{"status":"offline","reason":"unexpected_disconnect","timestamp":{self._will_ts}}}'
        return Outgoing(self._topic("system/will"), body.encode(), 1, True)

    def _transport(self, topic: str, payload: str, qos: int) -> Outgoing | None:
        # MQTTClient::publish -> PubSubClient::publish(topic, payload, retained = qos == 1)
        return Outgoing(topic, payload.encode(), 0, qos == 1)

    def _publish(self, topic: str, payload: str, qos: int = 1) -> None:
        if self.connected:
            super()._publish(topic, payload, qos)
            return
        # MQTTClient::publish while disconnected: circuit breaker (5 failures) then the
        # offline buffer (100 messages), replayed by processOfflineBuffer() on reconnect
        self._breaker_failures += 1
        if self._breaker_failures > 5 or len(self._offline) >= OFFLINE_BUFFER:
            return
        self._offline.append((topic, payload, qos))

    def _on_connect(self, now: float, first: bool) -> None:
        self._will_ts = self.millis(now)
        self._breaker_failures = 0
        buffered, self._offline = self._offline, []
        for topic, payload, qos in buffered:  # processOfflineBuffer()
            self._publish(topic, payload, qos)
        if first:
            self._heartbeat(now)  # setup(): publishHeartbeat() (interval-gated: silent before 60 s)
            self._subscribed = True
        else:
            self._subscribed = False  # PubSubClient clean session; reconnect() never resubscribes

    def _on_disconnect(self, now: float) -> None:
        self._subscribed = False

    # --------------------------------------------------------------- periodic
    def _heartbeat(self, now: float) -> None:
        """``MQTTClient::publishHeartbeat``: at most every 60 s of ``millis()``,
        counted from 0 (so never in the first minute after boot); QoS 0."""
        ms = self.millis(now)
        if ms - self._last_hb_ms < HEARTBEAT_S * 1000 or not self.connected:
            return
        self._last_hb_ms = ms
        body = (f'{{"esp_id":"{self.esp_id}","zone_id":"{self.zone_id}",'
                f'"master_zone_id":"{self.master_zone_id}",'
                f'"zone_assigned":{"true" if self.zone_assigned else "false"},"ts":{ms},'
                f'"uptime":{ms // 1000},"heap_free":{self.heap_free},"wifi_rssi":-60,'
                f'"sensor_count":{sum(1 for s in self.sensor_list if s.active)},'
                f'"actuator_count":{self.actuator_count}}}')
        self._publish(self._topic("system/heartbeat"), body, 0)

    heap_free = 176000

    def _tick(self, now: float) -> None:
        self._heartbeat(now)
        ms = self.millis(now)
        if ms - self._last_status_ms > 30000:  # loop(): publishAllActuatorStatus every 30 s
            self._all_status()
            self._last_status_ms = ms

    def _due(self) -> list[float]:
        due = [self._boot_at + (self._last_status_ms + 30001) / 1000]
        if self.connected:
            due.append(self._boot_at + (self._last_hb_ms + HEARTBEAT_S * 1000) / 1000)
        return due

    # -------------------------------------------------------------- payloads
    def status_payload(self, a: Actuator) -> str:
        """``ActuatorManager::buildStatusPayload``."""
        return (f'{{"esp_id":"{self.esp_id}","zone_id":"{self.zone_id}",'
                f'"subzone_id":"{a.config.subzone_id}","ts":{self.millis()},"gpio":{a.gpio},'
                f'"type":"{a.type}","state":{"true" if a.state else "false"},"pwm":{a.pwm},'
                f'"runtime_ms":{a.runtime_ms(self._now)},'
                f'"emergency":"{"active" if a.driver_estop else "normal"}"}}')

    def alert_payload(self, gpio: int, alert_type: str, message: str) -> str:
        """``ActuatorManager::publishActuatorAlert`` (``type``, not ``alert_type``)."""
        return f'{{"ts":{self.millis()},"gpio":{gpio},"type":"{alert_type}","message":"{message}"}}'

    def _sensor_payload(self, s: Sensor, wire_type: str, raw: float, value: float, unit: str,
                        quality: str, now: float) -> None:
        """``SensorManager::publishSensorReading`` / ``buildMQTTPayload``: raw as an
        unsigned 32-bit number, processed value with 2 decimals, ``timestamp`` in
        ms since boot; published "QoS 1" = retained. Needs only the connection."""
        if not self.connected:
            return
        raw_u32 = int(raw) & 0xFFFFFFFF
        body = (f'{{"esp_id":"{self.esp_id}","zone_id":"{self.zone_id}","subzone_id":"{s.subzone_id}",'
                f'"gpio":{s.gpio},"sensor_type":"{wire_type}","raw_value":{raw_u32},'
                f'"processed_value":{scanner.arduino_float(value)},"unit":"{unit}",'
                f'"quality":"{quality}","timestamp":{self.millis(now)}}}')
        self._publish(self._topic(f"sensor/{s.gpio}/data"), body, 1)

    def _config_response(self, kind: str, *, ok: bool, count: int = 0, message: str,
                         code: str | None = None, item: Any = None) -> None:
        """``ConfigResponseBuilder::publish``: ``config_response``, "QoS 1" (retained)."""
        doc: dict[str, Any] = {"status": "success" if ok else "error", "type": kind,
                               "count": count, "message": message or ("ok" if ok else "error")}
        if not ok:
            doc["error_code"] = code or "UNKNOWN_ERROR"
            failed = fit(item, 256)
            if isinstance(failed, dict) and failed:
                doc["failed_item"] = failed
            self.refuse("config", f"{doc['error_code']}: {message}")
        self._publish(self._topic("config_response"), dumps(doc), 1)

    # ---------------------------------------------------------------- routing
    def _route(self, topic: str, payload: bytes, now: float, retained: bool, qos: int) -> None:
        """main.cpp ``setup()`` MQTT callback, in its order."""
        size = packet_size(topic, payload, qos)
        if size > self.spec.packet_limit:
            # PubSubClient::readPacket: a packet larger than the buffer is ignored
            self.refuse(_what(topic), f"packet of {size} B exceeds MQTT_MAX_PACKET_SIZE {self.spec.packet_limit}")
            return
        text = scanner.text(payload)
        if topic == self._topic("config"):
            self._sensor_config(payload, now)
            self._actuator_config(payload, now)
            return
        if topic.startswith(self._topic("actuator/")):
            self._command(topic, text, now)
            return
        if topic == "kaiser/broadcast/emergency":
            try:
                ajson.parse(payload, SMALL_DOC)
            except ajson.JsonError as e:
                self.refuse("emergency", f"broadcast not parsed ({e.code}): no stop")
                return
            self.emergency_stop_all(now, "Broadcast emergency (God-Kaiser)")
            return
        if topic == self._topic("system/command"):
            try:
                doc = ajson.parse(payload, SMALL_DOC)
            except ajson.JsonError as e:
                self.refuse("system", f"not parsed ({e.code})")
                return
            command = ajson.as_string(doc.get("command") if isinstance(doc, dict) else None)
            self.refuse("system", f"{command}: legacy firmware knows only factory_reset (not modelled)")
            return
        self.refuse(_what(topic), f"not modelled: {topic}")

    # -------------------------------------------------------------- commands
    def _command(self, topic: str, text: str, now: float) -> None:
        """``ActuatorManager::handleActuatorCommand`` (no registration, no admission)."""
        gpio = scanner.gpio_from_topic(topic)
        if gpio == 255:
            if topic.endswith("/actuator/emergency"):
                self.refuse("emergency", "per-board emergency routed to the command handler "
                            "(topic starts with .../actuator/): dropped, no stop, no clear")
            else:
                self.refuse("command", f"no gpio in topic {topic}")
            return
        command = scanner.extract_string(text, "command")
        value = scanner.extract_float(text, "value", 0.0)
        duration = scanner.extract_uint32(text, "duration", 0)
        verb = command.upper()
        a = self._find(gpio)
        ok = False
        if verb == "ON":
            ok = self.control_binary(gpio, True, now)
        elif verb == "OFF":
            ok = self.control_binary(gpio, False, now)
        elif verb == "PWM":
            ok = self.control_value(gpio, value, now)
        elif verb == "TOGGLE" and a is not None:
            ok = self.control_binary(gpio, not a.cfg_state, now)
        if not ok:
            self.refuse("command", _why_failed(a, verb))
        body = (f'{{"esp_id":"{self.esp_id}","zone_id":"{self.zone_id}","ts":{self.millis(now)},'
                f'"gpio":{gpio},"command":"{scanner.utf8(command)}","value":{fixed3(value)},'
                f'"duration":{duration},"success":{"true" if ok else "false"},'
                f'"message":"{"Command executed" if ok else "Command failed"}"}}')
        self._publish(self._topic(f"actuator/{gpio}/response"), body, 1)
        if ok and a is not None:
            self._status(a)

    # ---------------------------------------------------------------- config
    def _sensor_config(self, payload: bytes, now: float) -> None:
        """main.cpp ``handleSensorConfig``: errors for a missing or empty ``sensors``;
        a success response only when every item was configured."""
        try:
            doc = ajson.parse(payload, CONFIG_DOC)
        except ajson.JsonError as e:
            self._config_response("sensor", ok=False, code="JSON_PARSE_ERROR",
                                  message=f"Failed to parse sensor config JSON: {e.code}")
            return
        items = doc.get("sensors") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            self._config_response("sensor", ok=False, code="MISSING_FIELD",
                                  message="Sensor config missing 'sensors' array")
            return
        if not items:
            self._config_response("sensor", ok=False, code="MISSING_FIELD",
                                  message="Sensor config array is empty")
            return
        ok = sum(1 for item in items if self._sensor_item(item if isinstance(item, dict) else {}, item, now))
        if ok == len(items):
            self._config_response("sensor", ok=True, count=ok,
                                  message=f"Configured {ok} sensor(s) successfully")

    def _sensor_item(self, obj: dict[str, Any], raw_item: Any, now: float) -> bool:
        """main.cpp ``parseAndConfigureSensor``."""
        def fail(code: str, message: str) -> bool:
            self._config_response("sensor", ok=False, code=code, message=message,
                                  item=raw_item if isinstance(raw_item, dict) else None)
            return False

        if "gpio" not in obj:
            return fail("MISSING_FIELD", "Sensor config missing required field 'gpio'")
        g = ajson.extract_int(obj, "gpio")
        if g is None:
            return fail("TYPE_MISMATCH", "Sensor field 'gpio' must be an integer")
        gpio = g & 0xFF
        if "sensor_type" not in obj:
            return fail("MISSING_FIELD", "Sensor config missing required field 'sensor_type'")
        st = ajson.extract_string(obj, "sensor_type")
        if st is None:
            return fail("TYPE_MISMATCH", "Sensor field 'sensor_type' must be a string")
        if "sensor_name" not in obj:
            return fail("MISSING_FIELD", "Sensor config missing required field 'sensor_name'")
        name = ajson.extract_string(obj, "sensor_name")
        if name is None:
            return fail("TYPE_MISMATCH", "Sensor field 'sensor_name' must be a string")
        active = ajson.extract_bool(obj, "active")
        raw_mode = ajson.extract_bool(obj, "raw_mode")
        s = Sensor(gpio=gpio, sensor_type=st, name=name, active=True if active is None else active,
                   raw_mode=True if raw_mode is None else raw_mode,
                   subzone_id=ajson.extract_string(obj, "subzone_id") or "")
        # ConfigManager::validateSensorConfig: gpio 0-39, a type
        if gpio == 255 or not st or gpio > 39:
            return fail("VALIDATION_FAILED", f"Sensor validation failed for GPIO {gpio}")
        if not s.active:
            self._remove_sensor(gpio)
            # SensorManager::removeSensor already deleted the NVS entry, so this second
            # ConfigManager::removeSensorConfig finds nothing and reports a write failure
            return fail("NVS_WRITE_FAILED", f"Failed to remove sensor config from NVS for GPIO {gpio}")
        if not self._configure_sensor(s):
            return fail("UNKNOWN_ERROR", f"Failed to configure sensor on GPIO {gpio}")
        return True

    def _configure_sensor(self, s: Sensor) -> bool:
        """``SensorManager::configureSensor``: one sensor per gpio (a second one
        replaces the first); a new one needs a free pin from the safe list (the
        OneWire pin and the I2C pins are taken at boot, 34-39 are not in the list)."""
        for i, old in enumerate(self.sensor_list):
            if old.gpio == s.gpio:
                self.sensor_list[i] = s
                self._persist_sensor(s)
                return True
        if len(self.sensor_list) >= self.spec.max_sensors:
            return False
        if not self.pins.available(s.gpio) or not self.pins.request(s.gpio, "sensor"):
            return False
        self.sensor_list.append(s)
        self._persist_sensor(s)
        return True

    def _persist_sensor(self, s: Sensor) -> None:
        stored = [x for x in self.nvs["sensors"] if x.gpio != s.gpio]
        self.nvs["sensors"] = [*stored, Sensor(**vars(s))]

    def _remove_sensor(self, gpio: int) -> None:
        for i, s in enumerate(self.sensor_list):
            if s.gpio == gpio:
                self.pins.release(gpio)
                del self.sensor_list[i]
                break
        self.nvs["sensors"] = [x for x in self.nvs["sensors"] if x.gpio != gpio]

    def _actuator_config(self, payload: bytes, now: float) -> None:
        """``ActuatorManager::handleActuatorConfig``."""
        try:
            doc = ajson.parse(payload, CONFIG_DOC)
        except ajson.JsonError as e:
            self._config_response("actuator", ok=False, code="JSON_PARSE_ERROR",
                                  message=f"Failed to parse actuator config JSON: {e.code}")
            return
        items = doc.get("actuators") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            self._config_response("actuator", ok=False, code="MISSING_FIELD",
                                  message="Actuator config missing 'actuators' array")
            return
        if not items:
            self._config_response("actuator", ok=False, code="MISSING_FIELD",
                                  message="Actuator config array is empty")
            return
        configured = 0
        for item in items:
            obj = item if isinstance(item, dict) else {}
            cfg, code, msg = parse_actuator(obj, current=False)
            failed = item if isinstance(item, dict) else None
            if cfg is None:
                self._config_response("actuator", ok=False, code=code, message=msg, item=failed)
                continue
            if not self._configure_actuator(cfg, now):
                self._config_response("actuator", ok=False, code="UNKNOWN_ERROR",
                                      message=f"Failed to configure actuator on GPIO {cfg.gpio}", item=failed)
                continue
            configured += 1
        if configured == len(items):
            self._config_response("actuator", ok=True, count=configured,
                                  message=f"Configured {configured} actuator(s) successfully")

    def _configure_actuator(self, cfg: ActuatorConfig, now: float) -> bool:
        """``ActuatorManager::configureActuator`` (legacy): an item for an existing gpio
        always removes and re-creates the actuator: its latch is gone and it starts
        from its ``default_state`` again."""
        if cfg.gpio == 255 or not cfg.actuator_type:
            return False
        if not cfg.active:
            self.remove_actuator(cfg.gpio, now)
            return True
        if self.has_sensor(cfg.gpio):
            return False
        existing = self._find(cfg.gpio)
        if existing is not None:
            if existing.type != cfg.actuator_type:
                drv.set_binary(existing, False, now, legacy=True)
            self.remove_actuator(cfg.gpio, now)
        # a re-configured actuator is not counted again (actuator_count_ drifts down
        # with every re-push: the heartbeat's actuator_count goes wrong)
        return self._new_actuator(cfg, now, count=existing is None)


def parse_actuator(obj: dict[str, Any], *, current: bool) -> tuple[ActuatorConfig | None, str, str]:
    """``ActuatorManager::parseActuatorDefinition`` (both generations; current also
    reads ``max_runtime_ms``). Returns (config, error code, message)."""
    if "gpio" not in obj:
        return None, "MISSING_FIELD", "Actuator config missing required field 'gpio'"
    g = ajson.extract_int(obj, "gpio")
    if g is None:
        return None, "TYPE_MISMATCH", "Actuator field 'gpio' must be an integer"
    aux = ajson.extract_int(obj, "aux_gpio")
    for key in ("actuator_type", "type"):
        if key in obj:
            atype = ajson.extract_string(obj, key)
            if atype is None:
                return None, "TYPE_MISMATCH", f"Actuator field '{key}' must be a string"
            break
    else:
        return None, "MISSING_FIELD", "Actuator config missing required field 'actuator_type'"
    if not atype:
        return None, "VALIDATION_FAILED", "Actuator type cannot be empty"
    for key in ("actuator_name", "name"):
        if key in obj:
            name = ajson.extract_string(obj, key)
            if name is None:
                return None, "TYPE_MISMATCH", f"Actuator field '{key}' must be a string"
            break
    else:
        return None, "MISSING_FIELD", "Actuator config missing required field 'actuator_name'"
    active = ajson.extract_bool(obj, "active")
    inverted = ajson.extract_bool(obj, "inverted_logic")
    if inverted is None:
        inverted = ajson.extract_bool(obj, "inverted")
    default_pwm = ajson.extract_int(obj, "default_pwm")
    cfg = ActuatorConfig(
        gpio=g & 0xFF, actuator_type=atype, actuator_name=name,
        aux_gpio=(aux & 0xFF) if aux is not None else 255,
        subzone_id=ajson.extract_string(obj, "subzone_id") or "",
        active=True if active is None else active,
        critical=bool(ajson.extract_bool(obj, "critical")),
        inverted_logic=bool(inverted),
        default_state=bool(ajson.extract_bool(obj, "default_state")),
        default_pwm=min(max(default_pwm, 0), 255) if default_pwm is not None else 0,
    )
    if current:
        mr = ajson.extract_int(obj, "max_runtime_ms")
        if mr is not None and mr > 0:
            cfg.max_runtime_ms = mr
    return cfg, "NONE", ""


def _why_failed(a: Actuator | None, verb: str) -> str:
    if verb not in ("ON", "OFF", "PWM", "TOGGLE"):
        return f"UNKNOWN_COMMAND: {verb}"
    if a is None:
        return "ACTUATOR_NOT_CONFIGURED"
    if a.emergency_stopped:
        return "EMERGENCY_STOP_ACTIVE"
    return "COMMAND_FAILED"


def _what(topic: str) -> str:
    from engine.firmware.board import _kind_of

    return _kind_of(topic)


__all__ = ["LegacyBoard", "packet_size", "parse_actuator", "server_type"]
