"""An in-process MQTT broker (amqtt) for ``mqtt.url = "embedded"``: demo, laptops, tests.

Moves data, decides nothing. Binds 127.0.0.1 on a free port unless told otherwise.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger("kaiser.broker")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (racy, good enough for local use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """``async with EmbeddedBroker() as b: b.url`` -> ``mqtt://127.0.0.1:PORT``.

    ``start()`` and ``stop()`` may be called again on the same object (same port): the
    broker-restart test does that. Sessions and retained messages do not survive a stop.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> None:
        # imported here: amqtt is heavy and only the embedded mode needs it
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        broker = Broker(config)
        await broker.start()
        self._broker = broker
        log.info("embedded MQTT broker listening on %s", self.url)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                await broker.shutdown()
            except Exception as exc:  # a half-started broker: nothing left to free
                log.debug("embedded broker shutdown: %s", exc)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
