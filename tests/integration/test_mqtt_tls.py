"""``mqtts://`` end to end against a real Mosquitto with a TLS listener, on a CA made
for the test (the ``openssl`` command): the server connects with its MQTT 5 link, a
reading produces its command over TLS, a broker certificate from another CA is a
clear connection error, and a TLS broker without MQTT 5 gets aiomqtt over TLS."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from engine.adapters.broker import _broker_class, free_port
from engine.app import Server

from .conftest import Board, listening, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NORTH, SOUTH = "ESP_00A1B2", "ESP_00C3D4"


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA the broker's certificate chains to
    other_ca: Path  # a CA that signed nothing here
    cert: Path  # the broker's, for localhost and 127.0.0.1
    key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=Kaiser test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test CA")
    d = tmp_path_factory.mktemp("tls")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "broker.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                                  "authorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", "2", "-extfile", "broker.ext", cwd=d)
    return Certs(d / "ca.pem", d / "other-ca.pem", d / "broker.pem", d / "broker.key")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


@pytest.fixture(scope="module")
def tls_broker(certs: Certs) -> Iterator[str]:
    """A Mosquitto with only a TLS listener on a free port: ``mqtts://localhost:PORT``."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        pytest.skip("needs the mosquitto binary for a TLS broker")
    port = free_port()
    conf = certs.ca.parent / "mosquitto.conf"
    # as root Mosquitto would switch to the user mosquitto, who cannot read pytest's
    # temporary directory
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}persistence false\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\n"
                    f"allow_anonymous true\ncafile {certs.ca}\ncertfile {certs.cert}\nkeyfile {certs.key}\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, proc)
        yield f"mqtts://localhost:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def trust(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> Certs:
    """The server trusts the test CA as an operator would: ``$SSL_CERT_FILE``."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("KAISER_MQTT_CLIENT", raising=False)
    monkeypatch.delenv("KAISER_INGEST", raising=False)
    return certs


@pytest.fixture
async def tls_board(tls_broker: str, certs: Certs, kaiser_id: str) -> AsyncIterator[Board]:
    port = int(tls_broker.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    async with aiomqtt.Client("localhost", port, identifier=f"{kaiser_id}-board", tls_context=ctx) as c:
        await c.subscribe(f"kaiser/{kaiser_id}/#", qos=1)
        async with listening(c, kaiser_id) as b:
            yield b
        await c.publish(f"kaiser/{kaiser_id}/server/status", b"", qos=1, retain=True)


async def test_the_server_speaks_mqtt5_over_tls_and_a_reading_commands_an_actuator(
        trust: Certs, tls_broker: str, tls_board: Board, kaiser_id: str, rules_dir: Path, tmp_path: Path) -> None:
    server = Server(make_settings(kaiser_id, tls_broker, rules_dir, tmp_path / "k.duckdb"), watch=False,
                    websocket=False)
    try:
        await server.start()
        assert server.mqtt is not None and server.mqtt.connected
        assert server.health()["mqtt"]["client"] == "mqtt5"
        await tls_board.heartbeat(SOUTH)
        await tls_board.expect(lambda t, p: t.endswith(f"{SOUTH}/system/heartbeat/ack"))
        await tls_board.reading(NORTH, 4, "ds18b20", round(30.0 * 16))
        _topic, payload = await tls_board.expect(lambda t, p: t.endswith(f"{SOUTH}/actuator/5/command"))
        assert payload == {"command": "ON", "value": 1.0, "duration": 0}
    finally:
        await server.stop()


@pytest.mark.parametrize("client", ["auto", "aiomqtt"])
async def test_a_broker_certificate_from_another_ca_is_a_clear_connection_error(
        client: str, certs: Certs, tls_broker: str, kaiser_id: str, rules_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The same message from either client, retried in the background, no traceback."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.other_ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("KAISER_MQTT_CLIENT", client)
    caplog.set_level(logging.INFO, logger="kaiser")
    server = Server(make_settings(kaiser_id, tls_broker, rules_dir, tmp_path / "k.duckdb"), watch=False,
                    websocket=False)
    try:
        async with asyncio.timeout(20):  # start() gives the broker 10 s, then goes on without it
            await server.start()
        assert server.mqtt is not None and not server.health()["mqtt"]["connected"]
        # auto: an untrusted broker is not taken for one without MQTT 5
        assert server.health()["mqtt"]["client"] == ("mqtt5" if client == "auto" else client)
        errors = [r.getMessage() for r in caplog.records if "certificate was not accepted" in r.getMessage()]
        assert errors, [r.getMessage() for r in caplog.records]
        assert "certificate verify failed: " in errors[0] and "$SSL_CERT_FILE" in errors[0]
        assert "_ssl.c" not in errors[0]  # the same words from either client
        assert f"MQTT connection to localhost:{tls_broker.rsplit(':', 1)[1]}" in errors[0]
        assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    finally:
        await server.stop()


async def test_a_tls_broker_without_mqtt5_gets_aiomqtt_over_tls(
        trust: Certs, kaiser_id: str, rules_dir: Path, tmp_path: Path) -> None:
    """amqtt (MQTT 3.1.1 only) behind TLS: the MQTT 5 link completes the handshake,
    the CONNECT is refused, and aiomqtt takes over with the same TLS."""
    port = free_port()
    broker = _broker_class()({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "ssl": True,
                                  "certfile": str(trust.cert), "keyfile": str(trust.key)}},
        "plugins": {"engine.adapters.broker.LocalAuthPlugin": {}},
    })
    await broker.start()
    server = Server(make_settings(kaiser_id, f"mqtts://localhost:{port}", rules_dir, tmp_path / "k.duckdb"),
                    watch=False, websocket=False)
    try:
        await server.start()
        assert server.mqtt is not None and server.mqtt.connected
        assert server.health()["mqtt"]["client"] == "aiomqtt"
    finally:
        await server.stop()
        await broker.shutdown()
