"""JSON Schemas (draft 2020-12) for the rules YAML and kaiser.toml, generated
from the condition/action registries, the sensor registry and the loader's key
lists. ``kaiser schema`` writes them to ``schemas/``; ``--check`` fails when the
committed files are out of date.

Files: ``devices``, ``safety``, ``rules``, ``tests`` (one per section: the
schema of that key's value), ``kaiser-rules.schema.json`` (a whole rules file,
referencing the four) and ``kaiser-toml.schema.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine import actions, conditions
from engine.config import loader
from engine.config.fields import ENV_NAME_RE
from engine.config.firmware_checks import ESP_ID_RE, FIRMWARES, ROM_RE
from engine.config.settings import settings_schema
from engine.model import ACTUATOR_TYPES, Code
from engine.units import WEEKDAYS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SECTION_FILES = {s: f"{s}.schema.json" for s in loader.SECTIONS}
FILE_SCHEMA = "kaiser-rules.schema.json"
TOML_SCHEMA = "kaiser-toml.schema.json"

_NAME = "^[A-Za-z0-9_-]+$"
_PART = "[A-Za-z0-9_-]+"


def _common_defs() -> dict[str, Any]:
    return {
        "duration": {
            "description": "500ms, 30s, 5m, 2h, 1d, or a number of seconds",
            "anyOf": [{"type": "number", "minimum": 0},
                      {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}],
        },
        "rate": {"description": "a count per window: 6/h, 10/m", "type": "string",
                 "pattern": r"^\s*\d+\s*/\s*(s|m|min|h|d)\s*$"},
        "time_of_day": {"description": "local time \"HH:MM\"", "type": "string",
                        "pattern": "^([01]?[0-9]|2[0-3]):[0-5][0-9]$"},
        "weekday": {"enum": [*WEEKDAYS, "monday", "tuesday", "wednesday", "thursday", "friday",
                             "saturday", "sunday"]},
        "sensor_ref": {"description": "device.sensor or device.sensor.quantity (multi-value chips)",
                       "type": "string", "pattern": f"^{_PART}\\.{_PART}(\\.{_PART})?$"},
        "actuator_ref": {"description": "device.actuator", "type": "string",
                         "pattern": f"^{_PART}\\.{_PART}$"},
        "device_ref": {"description": "a device name", "type": "string", "pattern": _NAME},
        "actuator_state": {
            "description": "on, off, toggle, or a PWM duty 0.0-1.0",
            "anyOf": [{"enum": ["on", "off", "toggle"]}, {"type": "number", "minimum": 0, "maximum": 1}],
        },
    }


def _sensor_types() -> list[str]:
    try:
        from sensors import registry

        names = registry.all_names()
    except Exception:  # the sensor registry is someone else's; never fail schema generation
        return []
    return sorted({n for name in names for n in (name, name.upper())})


def devices_schema() -> dict[str, Any]:
    types = _sensor_types()
    sensor_type: dict[str, Any] = {"type": "string", "description": "a sensor library name (any case)"}
    if types:
        sensor_type = {"enum": types, "description": "a sensor library name"}
    sensor = {
        "type": "object",
        "required": ["gpio", "type"],
        "additionalProperties": False,
        "properties": {
            "gpio": {"type": "integer", "minimum": 0, "maximum": 48},
            "type": sensor_type,
            "calibration": {"type": "object", "additionalProperties": {"type": "number"},
                            "description": "calibration points, e.g. {dry: 3200, wet: 1300}"},
            "i2c_address": {"type": "integer", "minimum": 0, "maximum": 127},
            "onewire_address": {"type": "string", "pattern": ROM_RE.pattern,
                                "description": "the DS18B20's ROM code, 16 hex digits, e.g. 28FF641E8D3C0C79"},
            "subzone": {"type": "string"},
        },
    }
    actuator = {
        "type": "object",
        "required": ["gpio", "type"],
        "additionalProperties": False,
        "properties": {
            "gpio": {"type": "integer", "minimum": 0, "maximum": 48},
            "type": {"enum": list(ACTUATOR_TYPES)},
            "aux_gpio": {"type": "integer", "minimum": 0, "maximum": 48},
            "critical": {"type": "boolean"},
            "inverted_logic": {"type": "boolean"},
            "default_state": {"anyOf": [{"type": "boolean"}, {"enum": ["on", "off"]}]},
            "subzone": {"type": "string"},
        },
    }
    device = {
        "type": "object",
        "required": ["esp_id"],
        "additionalProperties": False,
        "properties": {
            "esp_id": {"type": "string", "pattern": ESP_ID_RE.pattern,
                       "description": "ESP_ and 6 to 8 upper-case hex digits, e.g. ESP_12AB34CD"},
            "zone": {"type": "string"},
            "board": {"enum": list(loader.BOARDS)},
            "firmware": {"enum": list(FIRMWARES), "default": "auto",
                         "description": "El Trabajante generation the board runs (auto: told apart at run time)"},
            "emergency_token_env": {"type": "string", "pattern": ENV_NAME_RE.pattern,
                                    "description": "the environment variable holding the board's emergency "
                                                   "token (never the token itself)"},
            "sensors": {"type": "object", "propertyNames": {"pattern": _NAME},
                        "additionalProperties": {"$ref": "#/$defs/sensor"}},
            "actuators": {"type": "object", "propertyNames": {"pattern": _NAME},
                          "additionalProperties": {"$ref": "#/$defs/actuator"}},
        },
    }
    return {
        "$schema": DRAFT,
        "title": "Kaiser devices",
        "description": "The device map: device name -> ESP32 board with sensors and actuators.",
        "type": "object",
        "propertyNames": {"pattern": _NAME},
        "additionalProperties": {"$ref": "#/$defs/device"},
        "$defs": {"device": device, "sensor": sensor, "actuator": actuator},
    }


def safety_schema() -> dict[str, Any]:
    defs = _common_defs()
    defs["comparison"] = {
        "type": "object", "required": ["sensor"], "additionalProperties": False,
        "properties": {"sensor": {"$ref": "#/$defs/sensor_ref"},
                       **{op: {"type": "number"} for op in conditions.SINGLE_OPS},
                       **{op: conditions.S_PAIR for op in conditions.RANGE_OPS}},
        "oneOf": [{"required": [op]} for op in (*conditions.SINGLE_OPS, *conditions.RANGE_OPS)],
    }
    return {
        "$schema": DRAFT,
        "title": "Kaiser safety",
        "description": "Safety limits enforced by the guard on every command.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "defaults": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    "offline_after": {"$ref": "#/$defs/duration", "default": "90s"},
                    "stale_after": {"$ref": "#/$defs/duration", "default": "5m"},
                    "max_switches_per_minute": {"type": "integer", "minimum": 1, "default": 6},
                    "lease": {"$ref": "#/$defs/duration", "default": "60s"},
                },
            },
            "actuators": {
                "type": "object",
                "propertyNames": {"$ref": "#/$defs/actuator_ref"},
                "additionalProperties": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "max_runtime": {"$ref": "#/$defs/duration"},
                        "min_off": {"$ref": "#/$defs/duration"},
                        "max_starts": {"$ref": "#/$defs/rate"},
                        "rate_limit": {"$ref": "#/$defs/rate"},
                        "on_sensor_loss": {"enum": ["off", "hold", "on"]},
                        "pwm": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                                "minItems": 2, "maxItems": 2},
                        "out_of_range": {"enum": ["block", "clamp"], "default": "block",
                                         "description": "a duty outside pwm: block it, or send the "
                                                        "nearest bound"},
                    },
                },
            },
            "interlocks": {
                "type": "array",
                "items": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "never_together": {"type": "array", "items": {"$ref": "#/$defs/actuator_ref"},
                                           "minItems": 2},
                        "actuator": {"$ref": "#/$defs/actuator_ref"},
                        "only_if": {"$ref": "#/$defs/comparison"},
                    },
                    "oneOf": [{"required": ["never_together"]}, {"required": ["actuator", "only_if"]}],
                },
            },
        },
        "$defs": defs,
    }


def rules_schema() -> dict[str, Any]:
    defs = _common_defs()
    defs.update(conditions.condition_schema_defs())
    defs.update(actions.action_schema_defs())
    action_list = {"anyOf": [{"type": "array", "items": {"$ref": "#/$defs/action"}, "minItems": 1},
                             {"$ref": "#/$defs/action"}]}
    defs["rule"] = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9_-]+$"},
            "description": {"type": "string"},
            "priority": {"type": "integer", "default": 0,
                         "description": "higher wins a conflict over an actuator"},
            "cooldown": {"$ref": "#/$defs/duration", "description": "min time between two runs"},
            "enabled": {"type": "boolean", "default": True},
            "when": {"$ref": "#/$defs/condition", "description": "edge: runs when this turns true"},
            "then": action_list,
            "while": {"$ref": "#/$defs/condition", "description": "level: holds while true"},
            "hold": action_list,
            "release": action_list,
        },
        "oneOf": [
            {"required": ["when", "then"],
             "not": {"anyOf": [{"required": ["while"]}, {"required": ["hold"]}, {"required": ["release"]}]}},
            {"required": ["while", "hold"],
             "not": {"anyOf": [{"required": ["when"]}, {"required": ["then"]}]}},
        ],
    }
    return {
        "$schema": DRAFT,
        "title": "Kaiser rules",
        "description": "Automation rules: when+then (edge) or while+hold (level).",
        "type": "array",
        "items": {"$ref": "#/$defs/rule"},
        "$defs": defs,
    }


def tests_schema() -> dict[str, Any]:
    defs = _common_defs()
    defs["instant"] = {"description": "a duration after the test's start, or an ISO 8601 time",
                       "anyOf": [{"$ref": "#/$defs/duration"}, {"type": "string", "format": "date-time"}]}
    fields_of: dict[str, dict[str, Any]] = {
        "command": {"properties": {"actuator": {"$ref": "#/$defs/actuator_ref"},
                                   "set": {"$ref": "#/$defs/actuator_state"},
                                   "for": {"$ref": "#/$defs/duration"}}, "required": ["actuator"]},
        "blocked": {"properties": {"actuator": {"$ref": "#/$defs/actuator_ref"},
                                   "reason": {"enum": [c.name for c in Code]}}, "required": ["actuator"]},
        "notify": {"properties": {"level": {"enum": list(actions.NOTIFY_LEVELS)},
                                  "text": {"type": "string", "description": "a substring of the text"}}},
        "no_command": {"properties": {"actuator": {"$ref": "#/$defs/actuator_ref"}},
                       "required": ["actuator"]},
    }
    expect = {
        "type": "object", "required": ["at"], "additionalProperties": False,
        "properties": {"at": {"$ref": "#/$defs/instant"},
                       **{k: {"type": "object", "additionalProperties": False, **v} for k, v in fields_of.items()}},
        "oneOf": [{"required": [k]} for k in loader.EXPECT_KINDS],
    }
    step = {
        "type": "object", "required": ["at"], "additionalProperties": False,
        "properties": {
            "at": {"$ref": "#/$defs/instant"},
            "readings": {"type": "object", "propertyNames": {"$ref": "#/$defs/sensor_ref"},
                         "additionalProperties": {"type": ["number", "null"]}},
            "devices": {"type": "object", "propertyNames": {"$ref": "#/$defs/device_ref"},
                        "additionalProperties": {"enum": ["online", "offline"]}},
            "actuators": {"type": "object", "propertyNames": {"$ref": "#/$defs/actuator_ref"},
                          "additionalProperties": {"anyOf": [{"enum": ["on", "off"]},
                                                             {"type": "number", "minimum": 0, "maximum": 1}]}},
            "emergency_stop": {"description": "latch an emergency stop: all or a device",
                               "$ref": "#/$defs/device_ref"},
            "reset": {"description": "reset an emergency stop: all or a device", "$ref": "#/$defs/device_ref"},
        },
    }
    defs["step"] = step
    defs["expectation"] = expect
    return {
        "$schema": DRAFT,
        "title": "Kaiser rule tests",
        "description": "Scenarios run by `kaiser test` on a virtual clock.",
        "type": "array",
        "items": {
            "type": "object", "required": ["name", "steps"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "start": {"type": "string", "format": "date-time", "default": "2026-01-01T00:00:00Z"},
                "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
                "expect": {"type": "array", "items": {"$ref": "#/$defs/expectation"}},
                "only_expected": {"type": "boolean", "default": False},
                "rules": {"type": "array", "items": {"type": "string", "pattern": "^[a-z0-9_-]+$"}},
            },
        },
        "$defs": defs,
    }


def file_schema() -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "title": "Kaiser rules file",
        "description": "One YAML file of a Kaiser deployment: any of devices, safety, rules, tests. "
        "Add `# yaml-language-server: $schema=../schemas/kaiser-rules.schema.json` at the top.",
        "type": ["object", "null"],
        "additionalProperties": False,
        "properties": {s: {"anyOf": [{"$ref": f}, {"type": "null"}]} for s, f in SECTION_FILES.items()},
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every file ``kaiser schema`` writes."""
    return {
        SECTION_FILES["devices"]: devices_schema(),
        SECTION_FILES["safety"]: safety_schema(),
        SECTION_FILES["rules"]: rules_schema(),
        SECTION_FILES["tests"]: tests_schema(),
        FILE_SCHEMA: file_schema(),
        TOML_SCHEMA: settings_schema(),
    }


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def cmd_schema(args: argparse.Namespace) -> int:
    """``kaiser schema [--out DIR] [--check]``: write the schemas, or check they are current."""
    out = Path(getattr(args, "out", None) or "schemas")
    check = bool(getattr(args, "check", False))
    schemas = {name: render_schema(s) for name, s in all_schemas().items()}
    if check:
        stale = []
        for name, text in schemas.items():
            p = out / name
            try:
                current = p.read_text(encoding="utf-8")
            except OSError:
                current = None
            if current != text:
                stale.append(name)
        if stale:
            for name in stale:
                print(f"{out / name}: out of date", file=sys.stderr)
            print("run `kaiser schema` to regenerate", file=sys.stderr)
            return 1
        print(f"{len(schemas)} schemas in {out} are up to date", file=sys.stderr)
        return 0
    if out.exists() and not out.is_dir():
        print(f"kaiser schema: {out} is not a directory", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in schemas.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"kaiser schema: cannot write {out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(schemas)} schemas to {out}", file=sys.stderr)
    return 0
