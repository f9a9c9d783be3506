"""Control keys (SPEC section 5): who may stop, reset or command, and under which name.

Control always needs a key. The keys come from the environment of ``kaiser run``:

- ``[websocket] token_env`` (default ``KAISER_WS_TOKEN``): one key, named ``shared``;
- ``[websocket] tokens_env`` (default ``KAISER_WS_TOKENS``): named keys,
  ``NAME=TOKEN`` pairs separated by commas, semicolons or white space.

With neither set, the server makes a random key at every start, named ``local``,
and writes it with mode 0600 to the token file (:func:`token_path`: beside the
store, ``kaiser.duckdb`` -> ``kaiser.token``), where the CLI of the same user (or
root) finds it; nobody else can read it. The record names the key, plus the login
name the client reports: ``local (alice)``. A key is never a field the client
picks; the login alone names nobody.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError

log = logging.getLogger("kaiser.auth")

#: tokens longer than this (UTF-8 bytes) are refused before any comparison
MAX_TOKEN_BYTES = 1024
#: the name of the key given in ``token_env``, and of the generated one
SHARED, LOCAL = "shared", "local"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]{16,1024}")  # printable ASCII, no spaces
_LOGIN_BAD = re.compile(r"[^\w.@ -]")


@dataclass(frozen=True, slots=True)
class Keyring:
    """Named control keys. ``identify(token)`` says whose key a token is."""

    keys: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, tokens: Mapping[str, str]) -> Keyring:
        return cls(tuple((name, token.encode("utf-8", "surrogatepass")) for name, token in tokens.items()))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.keys]

    def identify(self, given: object) -> str | None:
        """The name of the key ``given`` is, or None: not a string, empty, too long
        or no key's. Never raises; every key is compared, in constant time."""
        if not isinstance(given, str) or not given or len(given) > MAX_TOKEN_BYTES:
            return None
        data = given.encode("utf-8", "surrogatepass")  # lone surrogates from JSON too
        if len(data) > MAX_TOKEN_BYTES:
            return None
        found = None
        for name, secret in self.keys:
            if hmac.compare_digest(data, secret) and found is None:
                found = name
        return found


def operator(key: str, login: object = None) -> str:
    """What the record names: the key's name, plus the login name the client reports
    (cleaned, at most 64 characters): ``local (alice)``."""
    text = _LOGIN_BAD.sub("", login)[:64].strip() if isinstance(login, str) else ""
    return f"{key} ({text})" if text and text != key else key


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """``NAME=TOKEN`` pairs (commas, semicolons or white space between them) -> names
    to tokens. Raises ConfigError naming ``source`` (never showing a token)."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for n, pair in enumerate((p for p in re.split(r"[,;\s]+", text) if p), start=1):
        name, sep, token = pair.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(f"{source}: entry {n} is not NAME=TOKEN (a name of letters, digits, "
                              "'_', '.', '@' or '-', at most 64)")
        if not _TOKEN.fullmatch(token):
            raise ConfigError(f"{source}: the token of {name!r} must be 16 to 1024 printable ASCII "
                              "characters without spaces (e.g. from `openssl rand -hex 32`)")
        if name in out:
            raise ConfigError(f"{source}: {name!r} is named twice")
        if token in seen:
            raise ConfigError(f"{source}: {seen[token]!r} and {name!r} have the same token "
                              "(the record could not tell them apart)")
        out[name], seen[token] = token, name
    return out


def configured_keys(token_env: str, tokens_env: str,
                    environ: Mapping[str, str] | None = None) -> Keyring | None:
    """The keys in the environment (see the module doc), or None when none is set.
    Raises ConfigError for a malformed ``tokens_env``."""
    env = os.environ if environ is None else environ
    tokens: dict[str, str] = {}
    shared = env.get(token_env) or ""
    if shared:
        tokens[SHARED] = shared
    named = env.get(tokens_env) or ""
    if named.strip():
        for name, token in parse_tokens(named, tokens_env).items():
            if name in tokens or token in tokens.values():
                raise ConfigError(f"{tokens_env}: {name!r} clashes with the key in {token_env} "
                                  f"(named {SHARED!r})")
            tokens[name] = token
    return Keyring.of(tokens) if tokens else None


# ---------------------------------------------------------------------- the token file


def state_dir() -> Path:
    """Where a server without a store file keeps its token: ``$XDG_RUNTIME_DIR/kaiser``
    (a per-user tmpfs), else ``$XDG_STATE_HOME/kaiser``, else ``~/.local/state/kaiser``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "kaiser"
    state = os.environ.get("XDG_STATE_HOME")
    return (Path(state) if state else Path.home() / ".local" / "state") / "kaiser"


def token_path(store_path: str, port: int) -> Path:
    """The token file: beside the store (``kaiser.duckdb`` -> ``kaiser.token``), or
    ``state_dir()/kaiser-PORT.token`` for a ``":memory:"`` store (PORT: the WebSocket
    port, which tells two such servers apart and is what the CLI dials)."""
    if store_path == ":memory:" or not store_path:
        return state_dir() / f"kaiser-{port}.token"
    return Path(store_path).with_suffix(".token")


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` with mode 0600, atomically (a reader sees the old
    file or the new one; a symlink planted at ``path`` is replaced, not followed).
    A directory it creates gets mode 0700. Raises OSError."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kaiser-token-", dir=path.parent)  # mode 0600, O_EXCL
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_token(path: Path) -> str | None:
    """The token in ``path``, or None when it is missing, unreadable or not a token."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _TOKEN.fullmatch(text) else None


def local_key(path: Path) -> Keyring:
    """A new random key named ``local``, written to the token file ``path``. When the
    file cannot be written the key is kept anyway (logged): control then needs a
    configured key and a restart, and nothing is left open."""
    token = secrets.token_urlsafe(32)
    try:
        write_token(path, token)
        log.info("control key written to %s (mode 0600; the kaiser CLI reads it)", path)
    except OSError as exc:
        log.error("cannot write the control key to %s (%s): control messages cannot be sent "
                  "until a key is configured in the environment (see docs/websocket.md, Security)",
                  path, exc)
    return Keyring.of({LOCAL: token})
