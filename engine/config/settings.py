"""``kaiser.toml``: server settings (SPEC section 1).

``load_settings(path)`` returns a frozen ``Settings``; every key has a default.
Unknown sections or keys, wrong types and bad values raise ``ConfigError``
whose ``diagnostics`` name ``file:line:col`` (tomllib reports no positions for
values, so the line of ``key =`` is found by scanning the text).

Paths (``kaiser.rules``, ``store.path``) are resolved relative to the toml
file's directory. The MQTT password comes only from the environment variable
``KAISER_MQTT_PASSWORD``; the WebSocket token from the variable ``token_env``
names.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.config.fields import did_you_mean
from engine.diagnostics import Diagnostic
from engine.errors import ConfigError
from engine.model import Position
from engine.units import parse_duration

PASSWORD_ENV = "KAISER_MQTT_PASSWORD"
DEFAULT_PATH = "kaiser.toml"
#: [mqtt] client values (engine/adapters/mqtt5link.py ``choose``)
MQTT_CLIENTS = ("auto", "mqtt5", "aiomqtt", "process")
#: [store] writer values (engine/adapters/storeproc.py)
STORE_WRITERS = ("process", "thread")
MIN_MEMORY_LIMIT = 16_000_000  # bytes: below it DuckDB spills or refuses even small flushes

#: a size as DuckDB writes one: KB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB of 1024
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]|[bB])?\s*$")
_SIZE_FACTOR = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True, slots=True)
class KaiserSettings:
    id: str = "god"  # kaiser_id in topics: kaiser/{id}/esp/...
    rules: Path = Path("rules")  # absolute, or relative to the working directory when no file
    tz: str = "UTC"
    max_unknown_devices: int = 1000  # boards outside the device map tracked at once (LRU)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    url: str = "mqtt://127.0.0.1:1883"  # or "embedded"
    client_id: str = "god-kaiser"
    username: str = ""
    password: str = field(default="", repr=False)  # from KAISER_MQTT_PASSWORD only
    #: which client talks to the broker (MQTT_CLIENTS; engine/adapters/mqtt5link.py)
    client: str = "auto"
    #: publish-only connections beside the main one, opened when the broker takes few
    #: QoS 1 messages in flight (engine/adapters/mqtt5link.py, "Lanes"); 0: never
    lanes: int = 3

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.embedded else (urlsplit(self.url).hostname or "127.0.0.1")

    @property
    def port(self) -> int:
        if self.embedded:
            return 1883
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: str = "kaiser.duckdb"  # ":memory:" allowed
    flush_interval: float = 1.0  # seconds
    retention: float = 90 * 86400.0  # seconds
    #: bytes DuckDB may use for its buffer pool and queries (0: DuckDB's own default,
    #: 80 % of RAM); not for ":memory:", whose rows are that memory
    memory_limit: int = 64_000_000
    #: where DuckDB runs: "process" (a process of its own) or "thread" (the server's)
    writer: str = "process"


@dataclass(frozen=True, slots=True)
class WebsocketSettings:
    listen: str = "127.0.0.1:8765"
    token_env: str = "KAISER_WS_TOKEN"
    tokens_env: str = "KAISER_WS_TOKENS"  # NAME=TOKEN pairs (engine/auth.py)
    max_clients: int = 100
    query_timeout: float = 10.0  # seconds per /query
    query_workers: int = 2  # /query statements at once

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def token(self) -> str | None:
        """The control token in the environment variable ``token_env``, or None
        (the server then uses its named keys or the token file: engine/auth.py)."""
        return os.environ.get(self.token_env) or None


@dataclass(frozen=True, slots=True)
class GitopsSettings:
    """Pull mode (docs/gitops.md): follow ``branch`` of ``repo``; empty ``repo`` = off."""

    repo: str = ""  # any URL or path `git fetch` takes; a relative path is relative to kaiser.toml
    branch: str = "main"
    path: str = "rules"  # the rules folder inside the repository
    interval: float = 30.0  # seconds between fetches
    require_tests: bool = True  # a failing rule test refuses the commit

    @property
    def enabled(self) -> bool:
        return bool(self.repo)


@dataclass(frozen=True, slots=True)
class Settings:
    kaiser: KaiserSettings = KaiserSettings()
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    websocket: WebsocketSettings = WebsocketSettings()
    gitops: GitopsSettings = GitopsSettings()
    #: the file these came from (None: all defaults)
    path: Path | None = None


# key -> kind: "str", "duration", "int", "bool", "size"
_SCHEMA: dict[str, dict[str, str]] = {
    "kaiser": {"id": "str", "rules": "str", "tz": "str", "max_unknown_devices": "int"},
    "mqtt": {"url": "str", "client_id": "str", "username": "str", "client": "str", "lanes": "int"},
    "store": {"path": "str", "flush_interval": "duration", "retention": "duration", "memory_limit": "size",
              "writer": "str"},
    "websocket": {"listen": "str", "token_env": "str", "tokens_env": "str", "max_clients": "int",
                  "query_timeout": "duration", "query_workers": "int"},
    "gitops": {"repo": "str", "branch": "str", "path": "str", "interval": "duration", "require_tests": "bool"},
}
_DOCS: dict[str, dict[str, str]] = {
    "kaiser": {"id": "kaiser_id in MQTT topics: kaiser/{id}/esp/...",
               "rules": "rules directory, relative to kaiser.toml",
               "tz": "IANA time zone for time windows and `at` triggers",
               "max_unknown_devices": "boards outside the device map tracked at once (least recently "
                                      "heard forgotten first)"},
    "mqtt": {"url": "mqtt://host:port, mqtts://host:port, or \"embedded\" (in-process broker)",
             "client_id": "MQTT client id (persistent session)",
             "username": "MQTT user name; the password comes only from env KAISER_MQTT_PASSWORD",
             "client": "auto (MQTT 5 on the mqtt5 codec, also for mqtts://; aiomqtt for brokers without MQTT 5), "
                       "mqtt5, aiomqtt, or process (a reader process); env KAISER_MQTT_CLIENT overrides",
             "lanes": "MQTT 5: this many more connections that only publish, boards spread over them by esp id "
                      "(each board's messages keep their order), opened when the broker takes fewer than 1000 "
                      "QoS 1 messages in flight a connection (Mosquitto: 20); 0 to 16, 0: one connection"},
    "store": {"path": "DuckDB file, relative to kaiser.toml; \":memory:\" allowed",
              "flush_interval": "at most this much data is lost on a crash",
              "retention": "readings older than this are deleted",
              "memory_limit": "memory DuckDB may use (buffer pool, queries; more spills to disk), e.g. \"64MB\"; "
                              "0: DuckDB's default, 80 % of RAM",
              "writer": "process (DuckDB in a process of its own: its work never delays the readings) or "
                        "thread (in the server's process)"},
    "websocket": {"listen": "HOST:PORT for ws://HOST:PORT/ws, GET /health and /metrics",
                  "token_env": "environment variable holding a control token (named \"shared\")",
                  "tokens_env": "environment variable holding named control tokens: NAME=TOKEN pairs",
                  "max_clients": "at most this many WebSocket clients",
                  "query_timeout": "a /query statement is interrupted after this long",
                  "query_workers": "at most this many /query statements run at once"},
    "gitops": {"repo": "git repository to follow (URL or path; empty: pull mode off)",
               "branch": "branch to follow",
               "path": "the rules folder inside the repository",
               "interval": "time between two fetches",
               "require_tests": "a commit whose rule tests fail is refused"},
}


def _defaults(section: str) -> dict[str, Any]:
    obj = {"kaiser": KaiserSettings(), "mqtt": MqttSettings(), "store": StoreSettings(),
           "websocket": WebsocketSettings(), "gitops": GitopsSettings()}[section]
    return {f.name: getattr(obj, f.name) for f in fields(obj)}  # type: ignore[arg-type]


class _Lines:
    """Find where a section or key is written (tomllib gives no positions)."""

    _HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')\s*(\.|=)")

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.sections: dict[str, int] = {}
        self.keys: dict[tuple[str, str], tuple[int, int]] = {}
        current = ""
        for n, line in enumerate(text.splitlines(), start=1):
            h = self._HEADER.match(line)
            if h:
                current = h.group(1).strip().strip("\"'")
                self.sections.setdefault(current, n)
                continue
            k = self._KEY.match(line)
            if k:
                key = k.group(1).strip("\"'")
                self.keys.setdefault((current, key), (n, line.index(k.group(1)) + 1))

    def key(self, section: str, key: str) -> Position:
        if (section, key) in self.keys:
            line, col = self.keys[(section, key)]
            return Position(self.file, line, col)
        return self.section(section)

    def section(self, section: str) -> Position:
        if section in self.sections:
            return Position(self.file, self.sections[section], 1)
        if ("", section) in self.keys:  # inline table: kaiser = {...}
            line, col = self.keys[("", section)]
            return Position(self.file, line, col)
        return Position(self.file, 1, 1)


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read ``kaiser.toml``. ``None``: ./kaiser.toml when it exists, else all defaults.

    Raises ConfigError (with positioned diagnostics) when the file is missing
    (an explicit path), unreadable, not TOML, or has unknown keys or bad values.
    """
    if path is None:
        if not Path(DEFAULT_PATH).is_file():
            return Settings(mqtt=MqttSettings(password=os.environ.get(PASSWORD_ENV, "")))
        path = DEFAULT_PATH
    p = Path(path)
    file = os.fspath(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        d = Diagnostic("K805", "error", f"no such settings file: {file}", Position(file, 0, 0),
                       hint="create it, or leave out -c to use the defaults")
        raise ConfigError(d.text(), [d]) from None
    except (OSError, UnicodeDecodeError) as e:
        d = Diagnostic("K805", "error", f"cannot read the settings file: {e}", Position(file, 1, 1))
        raise ConfigError(d.text(), [d]) from None
    return parse_settings(text, file, base=p.resolve().parent)


def parse_settings(text: str, file: str = DEFAULT_PATH, base: Path | None = None) -> Settings:
    """Settings from TOML text; relative paths are taken against ``base``."""
    out: list[Diagnostic] = []
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        pos = Position(file, int(m.group(1)), int(m.group(2))) if m else Position(file, 1, 1)
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) if m else msg
        hint = ""
        if "Invalid value" in msg:
            hint = "strings need quotes: id = \"god\""
        elif "Illegal character '\\n'" in msg:
            hint = "a string is missing its closing quote"
        d = Diagnostic("K801", "error", f"TOML syntax error: {msg}", pos, hint=hint)
        raise ConfigError(d.text(), [d]) from None
    lines = _Lines(file, text)
    values: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        spos = lines.section(section)
        if section not in _SCHEMA:
            out.append(Diagnostic("K802", "error", f"unknown section [{section}]", spos,
                                  hint=did_you_mean(section, _SCHEMA)
                                  or "sections: " + ", ".join(f"[{s}]" for s in _SCHEMA)))
            continue
        if not isinstance(body, Mapping):
            out.append(Diagnostic("K803", "error", f"{section} must be a table [{section}]", spos))
            continue
        got = values.setdefault(section, {})
        for key, value in body.items():
            kpos = lines.key(section, key)
            kind = _SCHEMA[section].get(key)
            if kind is None:
                hint = did_you_mean(key, _SCHEMA[section])
                if not hint and key == "password":
                    hint = f"the MQTT password is read only from the environment variable {PASSWORD_ENV}"
                elif not hint:
                    other = [s for s, ks in _SCHEMA.items() if key in ks]
                    hint = f"{key!r} belongs in [{other[0]}]" if other else \
                        "keys here: " + ", ".join(_SCHEMA[section])
                out.append(Diagnostic("K802", "error", f"unknown key {key!r} in [{section}]", kpos,
                                      hint=hint))
                continue
            v = _value(section, key, kind, value, kpos, out)
            if v is not None:
                got[key] = v
    return _build(values, file, base, lines, out)


def _value(section: str, key: str, kind: str, value: object, pos: Position,
           out: list[Diagnostic]) -> object | None:
    what = f"{section}.{key}"
    if kind == "str":
        if not isinstance(value, str):
            out.append(Diagnostic("K803", "error", f"{what} must be a string, not {value!r}", pos,
                                  hint=f"write {key} = \"{value}\""))
            return None
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            out.append(Diagnostic("K803", "error", f"{what} must be true or false, not {value!r}", pos))
            return None
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(Diagnostic("K803", "error", f"{what} must be a whole number, not {value!r}", pos))
            return None
        return value
    if kind == "size":
        try:
            return parse_size(value)
        except ValueError as e:
            out.append(Diagnostic("K803", "error", f"{what}: {e}", pos))
            return None
    try:
        return parse_duration(value)
    except ValueError as e:
        out.append(Diagnostic("K803", "error", f"{what}: {e}", pos))
        return None


def _build(values: dict[str, dict[str, Any]], file: str, base: Path | None, lines: _Lines,
           out: list[Diagnostic]) -> Settings:
    lines_needed: list[tuple[str, str, str, str]] = []  # (section, key, message, hint)
    k = {**_defaults("kaiser"), **values.get("kaiser", {})}
    m = {**_defaults("mqtt"), **values.get("mqtt", {})}
    s = {**_defaults("store"), **values.get("store", {})}
    w = {**_defaults("websocket"), **values.get("websocket", {})}
    g = {**_defaults("gitops"), **values.get("gitops", {})}
    if not k["id"] or re.search(r"[/+#\s]", str(k["id"])):
        lines_needed.append(("kaiser", "id", f"kaiser.id {k['id']!r} cannot be used in MQTT topics",
                             "use letters, digits, '_' or '-'"))
    try:
        ZoneInfo(str(k["tz"]))
    except (ZoneInfoNotFoundError, ValueError):
        lines_needed.append(("kaiser", "tz", f"unknown time zone {k['tz']!r}",
                             "use an IANA name like Europe/Berlin or UTC"))
    url = str(m["url"])
    if url != "embedded":
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname or not port_ok:
            lines_needed.append(("mqtt", "url", f"mqtt.url {url!r} is not mqtt://HOST:PORT",
                                 "e.g. mqtt://127.0.0.1:1883, mqtts://broker:8883 or \"embedded\""))
    if not m["client_id"]:
        lines_needed.append(("mqtt", "client_id", "mqtt.client_id must not be empty", ""))
    if m["client"] not in MQTT_CLIENTS:
        lines_needed.append(("mqtt", "client", f"mqtt.client {m['client']!r} is not one of {', '.join(MQTT_CLIENTS)}",
                             "auto is right unless you measured otherwise (docs/performance.md)"))
    if not 0 <= int(m["lanes"]) <= 16:
        lines_needed.append(("mqtt", "lanes", "mqtt.lanes must be 0 to 16", "3 is the default; 0: one connection"))
    if not s["path"]:
        lines_needed.append(("store", "path", "store.path must not be empty", "\":memory:\" is allowed"))
    if float(s["flush_interval"]) <= 0:
        lines_needed.append(("store", "flush_interval", "store.flush_interval must be longer than 0", ""))
    if 0 < int(s["memory_limit"]) < MIN_MEMORY_LIMIT:
        lines_needed.append(("store", "memory_limit", "store.memory_limit must be 0 (DuckDB's default) or at "
                             f"least {MIN_MEMORY_LIMIT // 1_000_000}MB", "e.g. 64MB"))
    if s["writer"] not in STORE_WRITERS:
        lines_needed.append(("store", "writer", f"store.writer {s['writer']!r} is not one of "
                             f"{', '.join(STORE_WRITERS)}", "process is right unless you measured otherwise"))
    listen = str(w["listen"])
    _host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        lines_needed.append(("websocket", "listen", f"websocket.listen {listen!r} is not HOST:PORT",
                             "e.g. 127.0.0.1:8765 or 0.0.0.0:8765"))
    if int(w["max_clients"]) < 1:
        lines_needed.append(("websocket", "max_clients", "websocket.max_clients must be at least 1", ""))
    if not 0 < float(w["query_timeout"]) <= 3600:
        lines_needed.append(("websocket", "query_timeout",
                             "websocket.query_timeout must be longer than 0 and at most 1h", "e.g. 10s"))
    if not 1 <= int(w["query_workers"]) <= 64:
        lines_needed.append(("websocket", "query_workers", "websocket.query_workers must be 1 to 64", ""))
    for key in ("token_env", "tokens_env"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(w[key])):
            lines_needed.append(("websocket", key, f"websocket.{key} {w[key]!r} is not an environment "
                                 "variable name", "e.g. KAISER_WS_TOKEN"))
    lines_needed.extend(_gitops_problems(g))
    for section, key, msg, hint in lines_needed:
        out.append(Diagnostic("K804", "error", msg, lines.key(section, key), hint=hint))
    if out:
        out.sort(key=lambda d: (d.pos.line, d.pos.col))
        raise ConfigError(f"{file}: {len(out)} error(s) in the settings", out)

    def rel(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() or base is None else base / q

    store_path = str(s["path"])
    if store_path != ":memory:":
        store_path = os.fspath(rel(store_path))
    return Settings(
        kaiser=KaiserSettings(id=str(k["id"]), rules=rel(str(k["rules"])), tz=str(k["tz"]),
                              max_unknown_devices=int(k["max_unknown_devices"])),
        mqtt=MqttSettings(url=url, client_id=str(m["client_id"]), username=str(m["username"]),
                          password=os.environ.get(PASSWORD_ENV, ""), client=str(m["client"]),
                          lanes=int(m["lanes"])),
        store=StoreSettings(path=store_path, flush_interval=float(s["flush_interval"]),
                            retention=float(s["retention"]), memory_limit=int(s["memory_limit"]),
                            writer=str(s["writer"])),
        websocket=WebsocketSettings(listen=listen, token_env=str(w["token_env"]),
                                    tokens_env=str(w["tokens_env"]), max_clients=int(w["max_clients"]),
                                    query_timeout=float(w["query_timeout"]),
                                    query_workers=int(w["query_workers"])),
        gitops=GitopsSettings(repo=_repo(str(g["repo"]), rel), branch=str(g["branch"]), path=str(g["path"]),
                              interval=float(g["interval"]), require_tests=bool(g["require_tests"])),
        path=Path(file) if base is not None else None,
    )


def parse_size(value: object) -> int:
    """``64MB``, ``512MiB``, ``1GB`` or a number of bytes -> bytes. Raises ValueError
    with a sentence for people."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"expected a size like 64MB, 512MiB or 1GB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_FACTOR[(m.group(2) or "").lower()])


def _gitops_problems(g: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """[gitops] values git would refuse or that would leave the repository."""
    found: list[tuple[str, str, str, str]] = []
    branch = str(g["branch"])
    if not branch or branch.startswith("-") or re.search(r"[\s~^:?*\[\\]|\.\.|@\{|^/|/$|\.lock$", branch):
        found.append(("gitops", "branch", f"gitops.branch {branch!r} is not a branch name", "e.g. main"))
    path = str(g["path"])
    if not path or Path(path).is_absolute() or ".." in Path(path).parts or path.startswith("-"):
        found.append(("gitops", "path", f"gitops.path {path!r} must be a folder inside the repository",
                      "e.g. rules (\".\" for the repository's top)"))
    if float(g["interval"]) <= 0:
        found.append(("gitops", "interval", "gitops.interval must be longer than 0", "e.g. 30s"))
    if str(g["repo"]).startswith("-"):
        found.append(("gitops", "repo", f"gitops.repo {g['repo']!r} is not a repository", ""))
    return found


def _repo(repo: str, rel: Callable[[str], Path]) -> str:
    """A local path is taken relative to kaiser.toml; URLs (``scheme://``, ``host:path``) stay."""
    if not repo or "://" in repo or re.match(r"^[^/]*:", repo):
        return repo
    return os.fspath(rel(repo))


def settings_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of kaiser.toml (for editors with TOML schema support)."""
    kinds: dict[str, dict[str, Any]] = {
        "str": {"type": "string"},
        "int": {"type": "integer", "minimum": 1},
        "bool": {"type": "boolean"},
        "duration": {"anyOf": [{"type": "number", "minimum": 0},
                               {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"}]},
        "size": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE.pattern}]},
    }
    props: dict[str, Any] = {}
    for section, keys in _SCHEMA.items():
        d = _defaults(section)
        sp: dict[str, Any] = {}
        for key, kind in keys.items():
            default = d[key]
            if isinstance(default, Path):
                default = os.fspath(default)
            if kind == "duration":
                default = {"flush_interval": "1s", "retention": "90d", "query_timeout": "10s",
                           "interval": "30s"}[key]
            if kind == "size":
                default = {"memory_limit": "64MB"}[key]
            sp[key] = {**kinds[kind], "description": _DOCS[section][key], "default": default}
        props[section] = {"type": "object", "properties": sp, "additionalProperties": False}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "kaiser-toml.schema.json",
        "title": "kaiser.toml",
        "description": "Kaiser server settings. Every key has a default; unknown keys are errors.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
