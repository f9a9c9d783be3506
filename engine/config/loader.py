"""Load a rules directory (or one file) into a ``Deployment`` with positioned diagnostics.

``load_deployment(path, tz)`` never raises: it returns the best-effort model
(bad items skipped) and every finding at once. Callers refuse the model when
any finding is an error. Semantic checks (unknown refs, GPIO conflicts, ...)
live in ``engine.config.checks``; this module covers syntax, structure, types,
names and sensor types.

Every item is built best effort: a bad action, condition or field is reported
and left out, the rest is kept. Whole, uniquely named items make the model;
everything that could be built (also in part, also a duplicate's body) is what
``load(path, tz).checked`` holds for the semantic checks, with ``Gaps`` saying
what is missing, so ``kaiser lint`` reports every defect in one run.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.actions import NOTIFY_LEVELS, actuator_state, build_action
from engine.actions import REGISTRY as ACTION_TYPES
from engine.conditions import REGISTRY as CONDITION_TYPES
from engine.conditions import build_condition, compare
from engine.config.boards import BOARDS as _BOARD_TABLES
from engine.config.checks import Gaps
from engine.config.fields import ENV_NAME_RE, RULE_NAME_RE, Ctx, did_you_mean
from engine.config.firmware_checks import FIRMWARES, ROM_RE
from engine.config.source import YMap, YNode, YScalar, YSeq, read_yaml, type_name
from engine.diagnostics import Diagnostic
from engine.model import (
    ACTUATOR_TYPES,
    NOWHERE,
    Action,
    Actuator,
    ActuatorLimits,
    All,
    Code,
    Comparison,
    Condition,
    Deployment,
    Device,
    Expectation,
    Interlock,
    Position,
    Rule,
    RuleTest,
    Safety,
    SafetyDefaults,
    Sensor,
    TestStep,
    Wait,
)

SECTIONS = ("devices", "safety", "rules", "tests")
BOARDS: tuple[str, ...] = tuple(_BOARD_TABLES)  # esp32dev, xiao_esp32c3
DEVICE_KEYS = ("esp_id", "zone", "board", "firmware", "emergency_token_env", "sensors", "actuators")
#: a device key that would hold a secret (``token``, ``emergency_token``, ``auth_token``,
#: ``password``, ...): never in the YAML; ``*_env`` keys name a variable and are no secret
SECRET_KEY_RE = re.compile(r"(^|_)(token|secret|password|passwd|auth|api_?key)(_|$)", re.IGNORECASE)
SENSOR_KEYS = ("gpio", "type", "calibration", "i2c_address", "onewire_address", "subzone")
ACTUATOR_KEYS = ("gpio", "type", "aux_gpio", "critical", "inverted_logic", "default_state", "subzone")
_ITEM_KEYS = SENSOR_KEYS + ACTUATOR_KEYS
#: a device's sections of items: (key, the keys an item's name must not be, what an item is)
_ITEM_SECTIONS = (("sensors", SENSOR_KEYS, "sensor"), ("actuators", ACTUATOR_KEYS, "actuator"))
SAFETY_KEYS = ("defaults", "actuators", "interlocks")
DEFAULTS_KEYS = ("offline_after", "stale_after", "max_switches_per_minute", "lease")
LIMIT_KEYS = ("max_runtime", "min_off", "max_starts", "on_sensor_loss", "pwm", "out_of_range", "rate_limit")
INTERLOCK_KEYS = ("name", "never_together", "actuator", "only_if")
RULE_KEYS = ("name", "description", "priority", "cooldown", "enabled", "when", "then", "while",
             "hold", "release")
TEST_KEYS = ("name", "start", "steps", "expect", "only_expected", "rules")
STEP_KEYS = ("at", "readings", "devices", "actuators", "emergency_stop", "reset")
EXPECT_KINDS = ("command", "blocked", "notify", "no_command")
DEFAULT_TEST_START = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
YAML_SUFFIXES = (".yaml", ".yml")
_RULE_CHILD_KEYS = frozenset(
    [k for c in CONDITION_TYPES for k in c.keys] + [k for a in ACTION_TYPES for k in a.keys])

T = TypeVar("T")


def yaml_files(root: Path) -> list[Path]:
    """Every *.yaml / *.yml under ``root`` (recursively, sorted; hidden dirs skipped)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(YAML_SUFFIXES) and not f.startswith("."):
                found.append(Path(dirpath) / f)
    return sorted(found)


@dataclass
class _Named:
    """First place each name was declared, for duplicate reports."""

    #: the position, or the node whose position it is (made only for a report)
    where: dict[str, Position | YNode] = field(default_factory=dict)

    def claim(self, ctx: Ctx, kind: str, name: str, at: Position | YNode) -> bool:
        first = self.where.get(name)
        if first is not None:
            ctx.error("K301", f"duplicate {kind} name {name!r}", _pos(at),
                      hint=f"{kind} names are unique across all files", related=_pos(first))
            return False
        self.where[name] = at
        return True


def _pos(at: Position | YNode) -> Position:
    return at if isinstance(at, Position) else at.pos


@dataclass
class _Loader:
    tz: str
    out: list[Diagnostic] = field(default_factory=list)
    devices: dict[str, Device] = field(default_factory=dict)
    limits: dict[str, ActuatorLimits] = field(default_factory=dict)
    defaults: SafetyDefaults | None = None
    interlocks: list[Interlock] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    tests: list[RuleTest] = field(default_factory=list)
    names: dict[str, _Named] = field(default_factory=dict)
    esp_ids: dict[str, YNode] = field(default_factory=dict)  # esp_id -> where it is written first
    limit_pos: dict[str, Position] = field(default_factory=dict)
    defaults_pos: Position | None = None
    # what the semantic checks look at: everything that could be built, even in
    # part or under a duplicate name (the model above keeps only whole, unique items)
    c_devices: dict[str, Device] = field(default_factory=dict)
    c_interlocks: list[Interlock] = field(default_factory=list)
    c_rules: list[Rule] = field(default_factory=list)
    c_tests: list[RuleTest] = field(default_factory=list)
    gap_items: set[Position] = field(default_factory=set)
    gap_conditions: set[Position] = field(default_factory=set)
    gap_refs: set[str] = field(default_factory=set)
    #: names written in files that could not be parsed (a YAML syntax error): a test
    #: naming one of them is not told the rule is unknown; None: a file was unreadable
    gap_names: set[str] | None = field(default_factory=set)
    extra_devices: list[Device] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ctx = Ctx(self.out, tz=self.tz)
        try:
            self.zone: ZoneInfo | None = ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.zone = None

    def unparsed(self, path: Path, codes: set[str]) -> None:
        """A file that could not be parsed: remember the names written in it, so that
        a test naming one of its rules gets no second finding (K404) for the same
        mistake. A file that could not even be read (K100, K103, K104) hides every name."""
        if self.gap_names is None:
            return
        if not codes & _SYNTAX_CODES:
            self.gap_names = None
            return
        try:  # read_yaml read it already: a regular UTF-8 file of at most 2 MB
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            self.gap_names = None
            return
        self.gap_names.update(_NAME_IN_TEXT.findall(text))

    def named(self, kind: str) -> _Named:
        named = self.names.get(kind)
        if named is None:  # not setdefault: that would make a _Named a call
            named = self.names[kind] = _Named()
        return named

    # files ---------------------------------------------------------------
    def file(self, root: YNode | None) -> None:
        if root is None:
            return
        ctx = self.ctx
        if not isinstance(root, YMap):
            if isinstance(root, YScalar) and root.value is None:
                return
            ctx.error("K108", f"a rules file must be a mapping with {', '.join(SECTIONS)}; "
                      f"this one is {type_name(root)}", root.pos,
                      hint="start the file with e.g. 'rules:'")
            return
        rest = YMap(root.file, root.line, root.col)
        for k, v in root.values.items():
            hint = _misplaced_section(k, v)
            if hint:
                ctx.error("K201", f"unknown key {k!r} in a rules file", root.keys[k], hint=hint)
            else:
                rest.values[k] = v
                rest.keylc[k] = root.keylc[k]
        ctx.keys(rest, SECTIONS, "a rules file",
                 children=DEVICE_KEYS + RULE_KEYS + SAFETY_KEYS + TEST_KEYS)
        for key, fn in (("devices", self.section_devices), ("safety", self.section_safety),
                        ("rules", self.section_rules), ("tests", self.section_tests)):
            node = root.values.get(key)
            if node is None or (isinstance(node, YScalar) and node.value is None):
                continue
            ctx.parents = [SECTIONS]
            fn(node)
        ctx.parents = []

    # devices -------------------------------------------------------------
    def section_devices(self, node: YNode) -> None:
        ctx = self.ctx
        m = ctx.map(node, "'devices'")
        if m is None:
            if isinstance(node, YSeq):
                ctx.out[-1] = Diagnostic(
                    "K202", "error", "'devices' must be a mapping of device names, not a list",
                    node.pos, hint="write 'north:' instead of '- name: north'")
            return
        keys = m.keys
        for name, dnode in m.values.items():
            kpos = keys[name]
            if name in DEVICE_KEYS:
                ctx.error("K201", f"{name!r} is a device key, not a device name", kpos,
                          hint="indent it under a device: devices: -> north: -> " + name)
                continue
            if not ctx.name(YScalar.at(name, kpos), "device name"):
                continue
            unique = self.named("device").claim(ctx, "device", name, kpos)
            built = self.device(name, dnode, kpos, unique)
            if not unique:  # its body is checked, but it is no ref target
                if built is not None:
                    self.extra_devices.append(built[1])
                continue
            if built is None:
                self.gap_refs.add(name)
                continue
            dev, checked = built
            if dev is not None:
                self.devices[name] = dev
            self.c_devices[name] = checked

    def device(self, name: str, node: YNode, kpos: Position,
               unique: bool = True) -> tuple[Device | None, Device] | None:
        """(the model's device or None, the device the checks see), or None when
        nothing could be built."""
        ctx = self.ctx
        what = f"device {name!r}"
        m = ctx.map(node, what)
        if m is None:
            return None
        ctx.parents = [SECTIONS]
        ctx.keys(self._no_secrets(name, m), DEVICE_KEYS, what, required=("esp_id",), children=_ITEM_KEYS)
        esp_id = ctx.text(m.values.get("esp_id"), "'esp_id'")
        if esp_id is not None and unique:
            first = self.esp_ids.get(esp_id)
            if first is not None:
                ctx.error("K306", f"esp_id {esp_id!r} is already used by another device",
                          m.values["esp_id"].pos, related=first.pos)
            else:
                self.esp_ids[esp_id] = m.values["esp_id"]
        zone = ctx.text(m.values["zone"], "'zone'") if "zone" in m.values else None
        board = None
        if "board" in m.values:
            board = ctx.choice(m.values["board"], "'board'", BOARDS)
        firmware = "auto"
        if "firmware" in m.values:
            firmware = ctx.choice(m.values["firmware"], "'firmware'", FIRMWARES) or "auto"
        token_env = ctx.env_name(m.values["emergency_token_env"], "'emergency_token_env'") \
            if "emergency_token_env" in m.values else None
        sensors: list[Sensor] = []  # the model's
        actuators: list[Actuator] = []
        c_sensors: list[Sensor] = []  # the checks' (also those with an unknown type)
        c_actuators: list[Actuator] = []
        dup_sensors: list[Sensor] = []
        dup_actuators: list[Actuator] = []
        ctx.parents = [DEVICE_KEYS]
        seen: dict[str, tuple[str, int, int]] = {}  # item -> where (a Position only for a report)
        for section, reserved, noun in _ITEM_SECTIONS:
            sm = m.values.get(section)
            if not isinstance(sm, YMap):  # the message only for a finding
                sm = ctx.map(sm, f"{section!r} of device {name!r}")
                if sm is None:
                    continue
            file, keylc = sm.file, sm.keylc
            for item, inode in sm.values.items():
                line, col = keylc[item]
                if item in reserved:
                    ctx.error("K201", f"{item!r} is a {noun} key, not a {noun} name", Position(file, line, col),
                              hint=f"indent it under a {noun}: {section}: -> NAME: -> {item}")
                    continue
                if not ctx.name(YScalar(item, file, line, col), f"{noun} name"):
                    continue
                dup = item in seen
                if dup:
                    ctx.error("K302", f"device {name!r} already has a sensor or actuator named {item!r}",
                              Position(file, line, col), related=Position(*seen[item]))
                else:
                    seen[item] = (file, line, col)
                # a duplicate's body is checked too; it is no ref target
                whole: Sensor | Actuator | None
                if section == "sensors":
                    whole, s_part = self.sensor(name, item, inode)
                    if whole is not None and not dup:
                        sensors.append(whole)
                    if s_part is not None:
                        (dup_sensors if dup else c_sensors).append(s_part)
                else:
                    whole, a_part = self.actuator(name, item, inode)
                    if whole is not None and not dup:
                        actuators.append(whole)
                    if a_part is not None:
                        (dup_actuators if dup else c_actuators).append(a_part)
                if whole is None and not dup and unique:  # declared: refs to it are not "unknown"
                    self.gap_refs.add(f"{name}.{item}")
        ctx.parents = []
        checked = Device(name, esp_id or "", zone, board, tuple(c_sensors), tuple(c_actuators), kpos,
                         firmware, token_env)
        if dup_sensors or dup_actuators:
            self.extra_devices.append(replace(checked, sensors=(*c_sensors, *dup_sensors),
                                              actuators=(*c_actuators, *dup_actuators)))
        if esp_id is None:
            return None, checked
        model = checked if (sensors, actuators) == (c_sensors, c_actuators) else \
            replace(checked, sensors=tuple(sensors), actuators=tuple(actuators))
        return model, checked

    def _no_secrets(self, name: str, m: YMap) -> YMap:
        """Report every key that would hold a secret (K209, without its value: findings
        end up in CI logs) and return the mapping without them."""
        secrets = [k for k in m.values if k not in DEVICE_KEYS and SECRET_KEY_RE.search(k)
                   and not k.lower().endswith("_env") and not _misspelt_env_key(k, m.values[k])]
        if not secrets:
            return m
        var = "KAISER_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_TOKEN"
        for k in secrets:
            self.ctx.error("K209", f"device {name!r} has a secret written in the YAML ({k!r}): tokens "
                           "never go into the rules files", m.keys[k],
                           hint=f"put the token in an environment variable of the server and name the "
                           f"variable here: emergency_token_env: {var}")
        rest = YMap(m.file, m.line, m.col)
        for k, v in m.values.items():
            if k not in secrets:
                rest.values[k] = v
                rest.keylc[k] = m.keylc[k]
        return rest

    def sensor(self, device: str, name: str, node: YNode) -> tuple[Sensor | None, Sensor | None]:
        """(the model's sensor, the checks' sensor): the checks also get one whose
        type is unknown (for its pin), the model only one with gpio and type."""
        ctx = self.ctx
        what = f"sensor {device}.{name}"
        m = ctx.map(node, what)
        if m is None:
            return None, None
        ctx.keys(m, SENSOR_KEYS, what, required=("gpio", "type"))
        gpio = ctx.integer(m.values.get("gpio"), "'gpio'", lo=0, hi=48)
        tname = ctx.text(m.values.get("type"), "'type'")
        canonical: str | None = None
        quantities: tuple[str, ...] = ()
        if tname is not None:
            try:
                from sensors import registry

                st, quantity = registry.resolve(tname)
            except KeyError:
                ctx.error("K305", f"unknown sensor type {tname!r}", m.values["type"].pos,
                          hint=did_you_mean(tname.lower(), registry.all_names())
                          or "see docs/sensors.md for the known types")
            except Exception as e:  # a broken sensor plugin must not stop lint
                ctx.error("K305", f"sensor type {tname!r} could not be resolved: {e}",
                          m.values["type"].pos)
            else:
                if quantity is None:
                    canonical = st.name
                else:  # one quantity of a chip: its first firmware name (sht31_humidity)
                    wire = st.quantity(quantity).wire_types
                    canonical = wire[0].lower() if wire else tname.strip().lower()
                if quantity is None and st.multi:
                    quantities = tuple(q.name for q in st.quantities)
        calibration: dict[str, float] = {}
        if "calibration" in m.values:
            cm = ctx.map(m.values["calibration"], "'calibration'")
            if cm is not None:
                for k, v in cm.values.items():
                    f = ctx.number(v, f"calibration {k!r}")
                    if f is not None:
                        calibration[k] = f
        i2c = ctx.integer(m.values["i2c_address"], "'i2c_address'", lo=0, hi=127) \
            if "i2c_address" in m.values else None
        onewire = ctx.text(m.values["onewire_address"], "'onewire_address'") \
            if "onewire_address" in m.values else None
        if onewire is not None and ROM_RE.match(onewire.strip()):
            onewire = onewire.strip().upper()  # as the board spells it (a malformed one is K482)
        subzone = ctx.text(m.values["subzone"], "'subzone'") if "subzone" in m.values else None
        if gpio is None:
            return None, None
        s = Sensor(device, name, gpio, canonical or "", calibration, i2c, onewire, subzone, quantities, m.pos)
        return (s if canonical is not None else None), s

    def actuator(self, device: str, name: str, node: YNode) -> tuple[Actuator | None, Actuator | None]:
        """(the model's actuator, the checks' actuator): as ``sensor``."""
        ctx = self.ctx
        what = f"actuator {device}.{name}"
        m = ctx.map(node, what)
        if m is None:
            return None, None
        ctx.keys(m, ACTUATOR_KEYS, what, required=("gpio", "type"))
        gpio = ctx.integer(m.values.get("gpio"), "'gpio'", lo=0, hi=48)
        atype = ctx.choice(m.values.get("type"), "'type'", ACTUATOR_TYPES)
        aux = ctx.integer(m.values["aux_gpio"], "'aux_gpio'", lo=0, hi=48) if "aux_gpio" in m.values else None
        flags: dict[str, bool] = {}
        for k in ("critical", "inverted_logic", "default_state"):
            if k in m.values:
                if k == "default_state" and isinstance(m.values[k], YScalar) and \
                        isinstance(m.values[k].value, str):  # type: ignore[union-attr]
                    st = ctx.choice(m.values[k], "'default_state'", ("on", "off"))
                    b = None if st is None else st == "on"
                else:
                    b = ctx.boolean(m.values[k], repr(k))
                if b is not None:
                    flags[k] = b
        subzone = ctx.text(m.values["subzone"], "'subzone'") if "subzone" in m.values else None
        if gpio is None:
            return None, None
        a = Actuator(device, name, gpio, atype or "", aux, subzone=subzone, pos=m.pos, **flags)
        return (a if atype is not None else None), a

    # safety --------------------------------------------------------------
    def section_safety(self, node: YNode) -> None:
        ctx = self.ctx
        m = ctx.map(node, "'safety'")
        if m is None:
            return
        ctx.keys(m, SAFETY_KEYS, "'safety'", children=DEFAULTS_KEYS + INTERLOCK_KEYS)
        ctx.parents = [SAFETY_KEYS]
        if "defaults" in m.values:
            self.safety_defaults(m.values["defaults"])
        am = ctx.map(m.values.get("actuators"), "'safety: actuators'")
        if am is not None:
            for ref, lnode in am.values.items():
                kpos = am.keys[ref]
                if ref in LIMIT_KEYS:
                    ctx.error("K201", f"{ref!r} is a limit, not an actuator", kpos,
                              hint=f"indent it under an actuator ref: actuators: -> north.pump: -> {ref}")
                    continue
                r = ctx.ref(YScalar.at(ref, kpos), "safety actuator", "actuator")
                if r is None:
                    continue
                if ref in self.limit_pos:
                    ctx.error("K301", f"safety limits for {ref!r} are already given", kpos,
                              related=self.limit_pos[ref])
                    self.limit(ref, lnode, kpos)  # its body is checked too
                    continue
                self.limit_pos[ref] = kpos
                lim = self.limit(ref, lnode, kpos)
                if lim is not None:
                    self.limits[ref] = lim
        q = ctx.seq(m.values.get("interlocks"), "'interlocks'")
        if q is not None:
            for inode in q.items:
                self.interlock(inode)
        ctx.parents = []

    def safety_defaults(self, node: YNode) -> None:
        ctx = self.ctx
        m = ctx.map(node, "'safety: defaults'")
        if m is None:
            return
        first = self.defaults_pos
        if first is not None:  # its body is checked too, then dropped
            ctx.error("K301", "safety defaults are already given", m.pos, related=first)
        else:
            self.defaults_pos = m.pos
        ctx.keys(m, DEFAULTS_KEYS, "safety defaults")
        base = SafetyDefaults()
        vals = {
            "offline_after": ctx.duration(m.values["offline_after"], "'offline_after'", positive=True)
            if "offline_after" in m.values else base.offline_after,
            "stale_after": ctx.duration(m.values["stale_after"], "'stale_after'", positive=True)
            if "stale_after" in m.values else base.stale_after,
            "max_switches_per_minute": ctx.integer(m.values["max_switches_per_minute"],
                                                   "'max_switches_per_minute'", lo=1)
            if "max_switches_per_minute" in m.values else base.max_switches_per_minute,
            "lease": ctx.duration(m.values["lease"], "'lease'", positive=True)
            if "lease" in m.values else base.lease,
        }
        def pick(key: str, default: float) -> float:
            v = vals[key]
            return float(v) if v is not None else default

        if first is not None:
            return
        self.defaults = SafetyDefaults(
            offline_after=pick("offline_after", base.offline_after),
            stale_after=pick("stale_after", base.stale_after),
            max_switches_per_minute=int(pick("max_switches_per_minute", base.max_switches_per_minute)),
            lease=pick("lease", base.lease),
            pos=m.pos,
        )

    def limit(self, ref: str, node: YNode, kpos: Position) -> ActuatorLimits | None:
        ctx = self.ctx
        m = ctx.map(node, f"safety limits of {ref}")
        if m is None:
            return None
        ctx.keys(m, LIMIT_KEYS, f"safety limits of {ref}")
        v = m.values
        max_runtime = ctx.duration(v["max_runtime"], "'max_runtime'", positive=True) if "max_runtime" in v else None
        min_off = ctx.duration(v["min_off"], "'min_off'") if "min_off" in v else None
        max_starts = ctx.rate(v["max_starts"], "'max_starts'") if "max_starts" in v else None
        rate_limit = ctx.rate(v["rate_limit"], "'rate_limit'") if "rate_limit" in v else None
        loss = ctx.choice(v["on_sensor_loss"], "'on_sensor_loss'", ("off", "hold", "on")) \
            if "on_sensor_loss" in v else "off"
        pwm = None
        if "pwm" in v:
            pwm = ctx.pair(v["pwm"], "'pwm'")
            if pwm is not None and not (0.0 <= pwm[0] <= pwm[1] <= 1.0):
                ctx.error("K204", f"'pwm' must be [low, high] with 0.0 <= low <= high <= 1.0, got "
                          f"[{pwm[0]:g}, {pwm[1]:g}]", v["pwm"].pos)
                pwm = None
        if loss is None:
            loss = "off"
        out_of_range = ctx.choice(v["out_of_range"], "'out_of_range'", ("block", "clamp")) \
            if "out_of_range" in v else "block"
        if "out_of_range" in v and "pwm" not in v:
            ctx.error("K203", "'out_of_range' goes with a 'pwm: [low, high]' range", v["out_of_range"].pos,
                      hint="add pwm: [low, high], or remove out_of_range")
        return ActuatorLimits(ref, max_runtime, min_off, max_starts, loss, pwm, rate_limit,  # type: ignore[arg-type]
                              kpos, out_of_range or "block")  # type: ignore[arg-type]

    def interlock(self, node: YNode) -> None:
        """Into the model when whole and uniquely named; into the checks whatever was built."""
        ctx = self.ctx
        m = ctx.map(node, "an interlock")
        if m is None:
            return
        errors = ctx.errors
        ctx.keys(m, INTERLOCK_KEYS, "an interlock", required=("name",))
        name = ctx.text(m.values.get("name"), "interlock 'name'")
        together = "never_together" in m.values
        only = "actuator" in m.values or "only_if" in m.values
        if together and only:  # reported; both parts are still checked
            ctx.error("K205", "an interlock is either 'never_together' or 'actuator' + 'only_if'",
                      m.keys.get("actuator", m.keys.get("only_if", m.pos)))
        refs: list[str] = []
        if together:
            q = ctx.seq(m.values["never_together"], "'never_together'")
            if q is not None:
                refs = [r for r in (ctx.ref(i, "an interlocked actuator", "actuator") for i in q.items)
                        if r is not None]
                if len(q.items) < 2:
                    ctx.error("K204", "'never_together' needs at least two actuators", q.pos)
        elif not only:
            ctx.error("K203", "an interlock needs 'never_together' or 'actuator' + 'only_if'", m.pos)
        act: str | None = None
        cond: Comparison | None = None
        if only:
            for k in ("actuator", "only_if"):
                if k not in m.values:
                    ctx.error("K203", f"an interlock with {'only_if' if k == 'actuator' else 'actuator'!r} "
                              f"needs {k!r}", m.pos)
            if "actuator" in m.values:
                act = ctx.ref(m.values["actuator"], "interlock 'actuator'", "actuator")
            if "only_if" in m.values:
                cond = self.only_if(m.values["only_if"])
        whole = ctx.errors == errors
        unique = name is not None and self.named("interlock").claim(ctx, "interlock", name, m.values["name"])
        if not refs and act is None:
            return
        il = Interlock(name or f"<interlock at line {m.pos.line}>", tuple(refs), act, cond, pos=m.pos)
        self.c_interlocks.append(il)
        if not whole:
            self.gap_items.add(m.pos)
        elif unique:
            self.interlocks.append(il)

    def only_if(self, node: YNode) -> Comparison | None:
        ctx = self.ctx
        m = ctx.map(node, "'only_if'")
        if m is None:
            return None
        from engine.model import COMPARE_OPS

        ctx.keys(m, ("sensor", *COMPARE_OPS), "'only_if'", required=("sensor",))
        sensor = ctx.ref(m.values.get("sensor"), "'sensor'", "sensor")
        cmp = compare(m, ctx, "'only_if'")
        if sensor is None or cmp is None:
            ctx.probe(m.values.get("sensor"), "sensor", m.pos)
            return None
        return Comparison(sensor, cmp[0], cmp[1], pos=m.pos)

    # rules ---------------------------------------------------------------
    def section_rules(self, node: YNode) -> None:
        ctx = self.ctx
        q = ctx.seq(node, "'rules'")
        if q is None:
            return
        ctx.parents = [SECTIONS]
        for item in q.items:
            self.rule(item)
        ctx.parents = []

    def rule(self, node: YNode) -> None:
        """Into the model when whole and uniquely named; into the checks whatever
        could be built (a bad action or condition is left out, the rest is kept)."""
        ctx = self.ctx
        m = ctx.map(node, "a rule")
        if m is None:
            return
        errors = ctx.errors
        ctx.keys(m, RULE_KEYS, "a rule", required=("name",), children=_RULE_CHILD_KEYS)
        v = dict(m.values)  # a copy: empty sections are dropped below
        name = ctx.name(v.get("name"), "rule name", RULE_NAME_RE,
                        "lower-case letters, digits, '_' and '-'")
        description = ctx.text(v["description"], "'description'", allow_empty=True) \
            if "description" in v else ""
        priority = ctx.integer(v["priority"], "'priority'") if "priority" in v else 0
        cooldown = ctx.duration(v["cooldown"], "'cooldown'") if "cooldown" in v else 0.0
        enabled = ctx.boolean(v["enabled"], "'enabled'") if "enabled" in v else True
        self._misplaced_actions(m, v)
        edge = "when" in v or "then" in v
        level = "while" in v or "hold" in v or "release" in v
        if edge and level:  # reported; both parts are still checked, as two rules
            a = next(k for k in ("when", "then") if k in v)
            b = next(k for k in ("while", "hold", "release") if k in v)
            ctx.error("K205", f"a rule has either when+then or while+hold, not both ({a!r} and {b!r})",
                      m.keys[b], hint="split it into two rules")
        if not edge and not level:
            ctx.error("K203", "a rule needs 'when' + 'then' (edge) or 'while' + 'hold' (level)", m.pos)
            self._claim_rule(name, v)
            return
        saved_parents = ctx.parents
        ctx.parents = [RULE_KEYS]
        kinds: list[Literal["edge", "level"]] = []
        if edge:
            kinds.append("edge")
        if level:
            kinds.append("level")
        built = [self._rule_part(m, v, kind) for kind in kinds]
        ctx.parents = saved_parents
        whole = ctx.errors == errors
        unique = self._claim_rule(name, v)
        shown = name if name is not None else _raw_text(v.get("name")) or f"<rule at line {m.pos.line}>"
        options = (description or "", priority if priority is not None else 0, cooldown or 0.0,
                   enabled if enabled is not None else True)
        for (kind, condition, actions, release), whole_condition in built:
            checked = Rule(shown, kind, condition, actions, release, *options, len(self.c_rules), m.pos)
            self.c_rules.append(checked)
            if not whole_condition:
                self.gap_conditions.add(m.pos)
            if not whole:
                self.gap_items.add(m.pos)
            elif unique:
                index = len(self.rules)
                self.rules.append(checked if index == checked.index else
                                  Rule(shown, kind, condition, actions, release, *options, index, m.pos))

    def _rule_part(self, m: YMap, v: dict[str, YNode], kind: Literal["edge", "level"]
                   ) -> tuple[tuple[Literal["edge", "level"], Condition, tuple[Action, ...],
                                tuple[Action, ...] | None], bool]:
        """The when/then or while/hold(/release) part of a rule, best effort, and
        whether its condition is whole: (kind, condition, actions, release); ``rule``
        makes the Rule with its name and options."""
        ctx = self.ctx
        edge = kind == "edge"
        cond_key, act_key = ("when", "then") if edge else ("while", "hold")
        keys = (cond_key, act_key) if edge else (cond_key, act_key, "release")
        for k in (cond_key, act_key):
            if k not in v:
                if difflib.get_close_matches(k, [u for u in v if u not in RULE_KEYS], n=1, cutoff=0.6):
                    continue  # misspelt: already reported as an unknown key with "did you mean"
                other = act_key if k == cond_key else cond_key
                if other in m.keys:
                    ctx.error("K203", f"a rule with {other!r} needs {k!r}", m.keys[other])
                else:  # only 'release'
                    ctx.error("K203", f"a rule needs {k!r}", m.pos)
        part = {k: v[k] for k in keys if k in v}
        for k in keys:
            if k in part and isinstance(part[k], YScalar) and part[k].value is None:  # type: ignore[union-attr]
                ctx.error("K203", f"{k!r} is empty", part[k].pos,
                          hint=f"indent what belongs to {k!r} under it, deeper than {k!r} itself")
                del part[k]
        condition: Condition | None = None
        cond_errors = ctx.errors
        if cond_key in part:
            ctx.triggers_allowed = edge
            condition = build_condition(part[cond_key], ctx)
            ctx.triggers_allowed = True
        whole_condition = condition is not None and ctx.errors == cond_errors
        actions = self.actions(part[act_key], act_key) if act_key in part else ()
        release = self.actions(part["release"], "release") if "release" in part else None
        if not edge:
            for act in actions:
                if isinstance(act, Wait):
                    ctx.error("K204", "'wait' is not allowed in 'hold' (a hold is a state, not a "
                              "sequence)", act.pos, hint="use 'release' or a when/then rule")
        return (kind, condition or All((), m.pos), actions, release), whole_condition

    def _misplaced_actions(self, m: YMap, v: dict[str, YNode]) -> None:
        """``while`` + ``then`` (or ``when`` + ``hold``): one mistake, one finding. The
        actions are then checked as the rule's ``hold`` (``then``)."""
        if "while" in v and "then" in v and not {"when", "hold"} & v.keys():
            self.ctx.error("K205", "a while rule uses hold:, not then:", m.keys["then"],
                           hint="write hold: (the actuators stay as set while the condition holds), "
                           "or when: instead of while: (run the actions once when it turns true)")
            v["hold"] = v.pop("then")
        elif "when" in v and "hold" in v and not {"while", "then", "release"} & v.keys():
            self.ctx.error("K205", "a when rule uses then:, not hold:", m.keys["hold"],
                           hint="write then: (run the actions once when it turns true), or while: instead "
                           "of when: (hold the actuators while it holds)")
            v["then"] = v.pop("hold")

    def _claim_rule(self, name: str | None, v: dict[str, YNode]) -> bool:
        """Claim a valid rule name (K301 when it is taken): True when it was free."""
        return name is not None and self.named("rule").claim(self.ctx, "rule", name, v["name"])

    def actions(self, node: YNode, key: str) -> tuple[Action, ...]:
        """The actions that could be built (each bad one is reported and left out)."""
        ctx = self.ctx
        items: list[YNode]
        if isinstance(node, YMap):
            items = [node]
        else:
            q = ctx.seq(node, f"{key!r}")
            if q is None:
                return ()
            items = q.items
        if not items:
            ctx.error("K204", f"{key!r} needs at least one action", node.pos)
            return ()
        return tuple(b for b in (build_action(i, ctx) for i in items) if b is not None)

    # tests ---------------------------------------------------------------
    def section_tests(self, node: YNode) -> None:
        ctx = self.ctx
        q = ctx.seq(node, "'tests'")
        if q is None:
            return
        ctx.parents = [SECTIONS]
        for item in q.items:
            self.test(item)
        ctx.parents = []

    def instant(self, node: YNode | None, what: str, start: float) -> float | None:
        """A relative duration (``130s``) or an ISO time -> seconds after ``start``."""
        ctx = self.ctx
        s = ctx.scalar(node, what)
        if s is None:
            return None
        if isinstance(s.value, str) and ("T" in s.value or "-" in s.value[1:]):
            t = self.iso(s, what)
            if t is None:
                return None
            if t < start:
                ctx.error("K204", f"{what} is before the test's start", s.pos)
                return None
            return t - start
        return ctx.duration(s, what)

    def iso(self, s: YScalar, what: str) -> float | None:
        try:
            dt = datetime.fromisoformat(str(s.value).replace("Z", "+00:00"))
        except ValueError:
            self.ctx.error("K204", f"{what} must be an ISO 8601 time like 2026-06-01T10:00:00+02:00, "
                           f"not {type_name(s)}", s.pos)
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self.zone or UTC)
        return dt.timestamp()

    def test(self, node: YNode) -> None:
        """Into the model when whole and uniquely named; into the checks whatever was built."""
        ctx = self.ctx
        m = ctx.map(node, "a test")
        if m is None:
            return
        errors = ctx.errors
        ctx.keys(m, TEST_KEYS, "a test", required=("name", "steps"),
                 children=STEP_KEYS + EXPECT_KINDS)
        v = m.values
        name = ctx.text(v.get("name"), "test name")
        start: float | None = DEFAULT_TEST_START
        if "start" in v:
            s = ctx.scalar(v["start"], "'start'")
            start = None if s is None else self.iso(s, "'start'")
        only_expected = ctx.boolean(v["only_expected"], "'only_expected'") if "only_expected" in v else False
        rules: list[str] = []
        if "rules" in v:
            q = ctx.seq(v["rules"], "'rules'")
            for i in q.items if q is not None else ():
                r = ctx.name(i, "rule name", RULE_NAME_RE, "lower-case letters, digits, '_' and '-'")
                if r is not None:
                    rules.append(r)
        steps: list[TestStep] = []
        expects: list[Expectation] = []
        base = start if start is not None else DEFAULT_TEST_START
        sq = ctx.seq(v.get("steps"), "'steps'")
        for item in sq.items if sq is not None else ():
            st = self.step(item, base)
            if st is not None:
                steps.append(st)
        if "expect" in v:
            eq = ctx.seq(v["expect"], "'expect'")
            for item in eq.items if eq is not None else ():
                ex = self.expectation(item, base)
                if ex is not None:
                    expects.append(ex)
        whole = ctx.errors == errors
        unique = name is not None and self.named("test").claim(ctx, "test", name, v["name"])
        t = RuleTest(name or f"<test at line {m.pos.line}>", base, tuple(steps), tuple(expects), bool(only_expected), tuple(rules), m.pos)
        self.c_tests.append(t)
        if not whole:
            self.gap_items.add(m.pos)
        elif unique:
            self.tests.append(t)

    def _mapping(self, node: YNode | None, what: str, key_kind: str,
                 value: Callable[[YNode], T | None]) -> dict[str, T]:
        ctx = self.ctx
        m = ctx.map(node, what)
        if m is None:
            return {}
        out: dict[str, T] = {}
        for k, vnode in m.values.items():
            ref = ctx.ref(YScalar.at(k, m.keys[k]), f"a {key_kind} in {what}", key_kind)
            val = value(vnode)
            if ref is None:
                continue
            if val is None and not (key_kind == "sensor" and _is_null(vnode)):
                ctx.probe(YScalar.at(ref, m.keys[k]), key_kind, m.pos)  # a bad value: the ref is still checked
                continue
            out[ref] = val  # type: ignore[assignment]
        return out  # the bad entries are reported and left out

    def _online(self, n: YNode) -> bool | None:
        s = self.ctx.choice(n, "a device state", ("online", "offline"))
        return None if s is None else s == "online"

    def step(self, node: YNode, start: float) -> TestStep | None:
        ctx = self.ctx
        m = ctx.map(node, "a test step")
        if m is None:
            return None
        ctx.keys(m, STEP_KEYS, "a test step", required=("at",))
        v = m.values
        at = self.instant(v.get("at"), "'at'", start) if "at" in v else None
        readings = self._mapping(v["readings"], "'readings'", "sensor",
                                 lambda n: None if _is_null(n) else ctx.number(n, "a reading")) \
            if "readings" in v else {}
        devices = self._mapping(v["devices"], "'devices'", "device", self._online) \
            if "devices" in v else {}
        actuators = self._mapping(v["actuators"], "'actuators'", "actuator",
                                  lambda n: _float_state(actuator_state(n, ctx, "an actuator state",
                                                                        allow_toggle=False))) \
            if "actuators" in v else {}
        stop = self._stop_target(v["emergency_stop"], "'emergency_stop'") if "emergency_stop" in v else None
        reset = self._stop_target(v["reset"], "'reset'") if "reset" in v else None
        if at is None:  # the step is left out; its refs are still checked
            for kind, refs in (("sensor", readings), ("device", devices), ("actuator", actuators)):
                ctx.probes.extend((kind, ref, m.pos) for ref in refs)
            return None
        return TestStep(at, readings, devices, actuators, m.pos, stop, reset)

    def _stop_target(self, node: YNode, what: str) -> str | None:
        """``all`` or a device name (lint checks that it exists)."""
        return self.ctx.ref(node, what, "device")

    def expectation(self, node: YNode, start: float) -> Expectation | None:
        ctx = self.ctx
        m = ctx.map(node, "an expectation")
        if m is None:
            return None
        ctx.keys(m, ("at", *EXPECT_KINDS), "an expectation", required=("at",))
        kinds = [k for k in EXPECT_KINDS if k in m.values]
        if len(kinds) != 1:
            if not kinds:
                ctx.error("K203", f"an expectation needs one of {', '.join(EXPECT_KINDS)}", m.pos)
                return None
            ctx.error("K205", f"an expectation has one of {', '.join(EXPECT_KINDS)}; this one has "
                      f"{', '.join(kinds)}", m.keys[kinds[1]], hint="write one item per expectation")
        kind = kinds[0]  # with several, the first is still checked
        at = self.instant(m.values.get("at"), "'at'", start) if "at" in m.values else None
        fm = ctx.map(m.values[kind], repr(kind))
        if fm is None:
            return None
        # a bad field is reported and left out (the expectation is kept for the checks)
        fields: dict[str, object] = {}
        if kind in ("command", "blocked", "no_command"):
            allowed = {"command": ("actuator", "set", "for"), "blocked": ("actuator", "reason"),
                       "no_command": ("actuator",)}[kind]
            ctx.keys(fm, allowed, f"a {kind!r} expectation", required=("actuator",))
            ref = ctx.ref(fm.values.get("actuator"), "'actuator'", "actuator")
            if ref is not None:
                fields["actuator"] = ref
            if "set" in fm.values:
                fields["set"] = actuator_state(fm.values["set"], ctx)
            if "for" in fm.values:
                fields["for"] = ctx.duration(fm.values["for"], "'for'")
            if "reason" in fm.values:
                code = ctx.choice(fm.values["reason"], "'reason'", [c.name for c in Code])
                fields["reason"] = None if code is None else Code[code.upper()]
        else:
            ctx.keys(fm, ("level", "text"), "a 'notify' expectation")
            if "level" in fm.values:
                fields["level"] = ctx.choice(fm.values["level"], "'level'", NOTIFY_LEVELS)
            if "text" in fm.values:
                fields["text"] = ctx.text(fm.values["text"], "'text'")
        fields = {k: x for k, x in fields.items() if x is not None}
        if at is None:  # left out; its actuator is still checked
            if isinstance(fields.get("actuator"), str):
                ctx.probes.append(("actuator", str(fields["actuator"]), m.pos))
            return None
        return Expectation(at, kind, fields, m.pos)  # type: ignore[arg-type]

    # result --------------------------------------------------------------
    def deployment(self, files: list[str]) -> Deployment:
        return Deployment(
            devices=dict(self.devices),
            safety=Safety(self.defaults or SafetyDefaults(), dict(self.limits), tuple(self.interlocks)),
            rules=tuple(self.rules),
            tests=tuple(self.tests),
            files=tuple(files),
            tz=self.tz,
        )

    def checked(self, files: list[str]) -> Deployment:
        """Everything that could be built, for the semantic checks: items built in
        part, and the bodies of duplicates (a second rule of a name is checked,
        even though only the first is in the model)."""
        return Deployment(
            devices=dict(self.c_devices),
            safety=Safety(self.defaults or SafetyDefaults(), dict(self.limits), tuple(self.c_interlocks)),
            rules=tuple(self.c_rules),
            tests=tuple(self.c_tests),
            files=tuple(files),
            tz=self.tz,
        )

    def gaps(self) -> Gaps:
        return Gaps(frozenset(self.gap_items), frozenset(self.gap_conditions), frozenset(self.gap_refs),
                    tuple(self.ctx.probes), tuple(self.extra_devices),
                    rules=None if self.gap_names is None else frozenset(self.gap_names))


@dataclass(frozen=True)
class Loaded:
    """What ``load`` found: the model, the findings, and what the semantic checks see."""

    #: the best-effort model: only whole, uniquely named items (callers refuse it
    #: when any finding is an error)
    deployment: Deployment
    #: every loader finding, sorted by position
    diagnostics: list[Diagnostic]
    #: everything that could be built (items in part, duplicates' bodies), for
    #: ``run_checks(checked, partial=..., gaps=gaps)``
    checked: Deployment
    gaps: Gaps


def _misplaced_section(key: str, value: YNode) -> str:
    """A hint when a top-level key looks like a device or a list of rules/tests."""
    if key in SECTIONS:
        return ""
    if isinstance(value, YMap) and "esp_id" in value.values:
        return f"is {key!r} a device? devices go under 'devices:'"
    if isinstance(value, YSeq) and value.items and isinstance(value.items[0], YMap):
        first = value.items[0].values
        if "steps" in first or "expect" in first:
            return "tests go under 'tests:'"
        if any(k in first for k in ("when", "while", "then", "hold")):
            return "rules go under 'rules:', one list for all of them"
    return ""


def _misspelt_env_key(key: str, value: YNode) -> bool:
    """``emergency_token_evn: KAISER_NORTH_TOKEN``: a misspelt emergency_token_env
    naming a variable (K201, did you mean), not a secret."""
    return bool(difflib.get_close_matches(key.lower(), ["emergency_token_env"], n=1, cutoff=0.8)) and \
        isinstance(value, YScalar) and isinstance(value.value, str) and bool(ENV_NAME_RE.match(value.value))


def _raw_text(n: YNode | None) -> str:
    """A bad name's text as written (the checks name the item by it), or ''."""
    return n.value if isinstance(n, YScalar) and isinstance(n.value, str) else ""


def _is_null(n: YNode) -> bool:
    return isinstance(n, YScalar) and n.value is None


def _float_state(v: object) -> float | None:
    return v if isinstance(v, float) else None


#: a file whose text could be read, but not parsed as YAML
_SYNTAX_CODES = frozenset({"K101", "K102", "K105", "K106"})
#: ``name: x`` / ``- name: "x"`` anywhere in a file (block or flow style)
_NAME_IN_TEXT = re.compile(r"""(?:^|[\s{,-])name\s*:\s*["']?([a-z0-9_-]+)""", re.MULTILINE)

_WIN_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def load_deployment(path: str | os.PathLike[str], tz: str = "UTC") -> tuple[Deployment, list[Diagnostic]]:
    """Every *.yaml/*.yml under ``path`` (a directory, recursively) or the one file.

    Returns the best-effort ``Deployment`` (bad items skipped) and every finding
    (syntax, structure, types, names, sensor types), sorted by position. Never
    raises. Positions carry file names as ``path`` joined with the relative name.
    """
    loaded = load(path, tz)
    return loaded.deployment, loaded.diagnostics


def load(path: str | os.PathLike[str], tz: str = "UTC") -> Loaded:
    """``load_deployment`` plus what ``kaiser lint`` checks: every item that could be
    built, even in part or under a duplicate name, and the ``Gaps`` left by the rest,
    so that one defect never hides another. Never raises."""
    out: list[Diagnostic] = []
    loader = _Loader(tz=tz, out=out)
    if loader.zone is None:
        out.append(Diagnostic("K109", "error", f"unknown time zone {tz!r}", NOWHERE,
                              hint="use an IANA name like Europe/Berlin"))
    root = Path(path)
    files: list[Path]
    try:
        if root.is_dir():
            files = yaml_files(root)
        elif root.exists():
            files = [root]
        else:
            out.append(Diagnostic("K100", "error", f"no such file or directory: {os.fspath(path)}",
                                  Position(os.fspath(path), 0, 0)))
            return Loaded(loader.deployment([]), out, loader.checked([]), loader.gaps())
    except OSError as e:
        out.append(Diagnostic("K100", "error", f"cannot read {os.fspath(path)}: {e}",
                              Position(os.fspath(path), 0, 0)))
        return Loaded(loader.deployment([]), out, loader.checked([]), loader.gaps())
    names: list[str] = []
    for f in files:
        name = os.fspath(f)
        names.append(name)
        try:
            before = len(out)
            tree = read_yaml(f, name, out)
            if tree is None and any(d.is_error for d in out[before:]):
                loader.unparsed(f, {d.code for d in out[before:]})
            loader.file(tree)
        except Exception as e:  # a loader bug must not crash the server
            out.append(Diagnostic("K199", "error", f"internal error while loading this file: "
                                  f"{type(e).__name__}: {e}", Position(name, 1, 1),
                                  hint="please report this"))
    from engine.diagnostics import sort_key

    out.sort(key=sort_key)
    return Loaded(loader.deployment(names), out, loader.checked(names), loader.gaps())
