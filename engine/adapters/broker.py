"""An in-process MQTT broker (amqtt) for ``mqtt.url = "embedded"``: demo, laptops, tests.

Moves data, decides nothing. Binds 127.0.0.1 on a free port unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

log = logging.getLogger("kaiser.broker")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (racy, good enough for local use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _local_auth_plugin() -> Any:
    from amqtt.plugins.base import BaseAuthPlugin

    class LocalAuthPlugin(BaseAuthPlugin):
        """Lets every client in (the embedded broker binds loopback) as a named,
        non-anonymous session, so persistent sessions queue QoS 1 messages."""

        async def authenticate(self, *, session: Any) -> bool | None:
            return True

    return LocalAuthPlugin


def _broker_class() -> Any:
    from amqtt.broker import Broker

    class QueueingBroker(Broker):
        """amqtt delivers the QoS 1 messages it queued for a persistent session with
        the RETAIN flag set, so they would look like broker snapshots (which fire no
        edge rule). MQTT 3.1.1 (3.3.1.3) says queued messages go out with RETAIN 0,
        as Mosquitto does: send them that way."""

        async def _publish_session_retained_messages(self, session: Any) -> None:
            handler = self._get_handler(session)
            if handler is None:
                return
            tasks = []
            while not session.retained_messages.empty():
                queued = await session.retained_messages.get()
                tasks.append(asyncio.ensure_future(
                    handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)))
            if tasks:
                await asyncio.wait(tasks)

        async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                              session: Any) -> None:
            """At every connect amqtt 0.12 offers the new client the retained
            messages of *every* filter any client has subscribed (``for topic in
            self._subscriptions``), so a board got e.g. ``server/status`` without
            subscribing to it. A client gets retained messages for its own
            subscriptions only (MQTT 3.1.1, 3.3.1.3; Mosquitto): skip the others'."""
            topic_filter = subscription[0]
            holders = self._subscriptions.get(topic_filter, ())
            if any(s.client_id == session.client_id for s, _ in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return QueueingBroker


def __getattr__(name: str) -> Any:
    # amqtt imports plugins by dotted path; build the class lazily so that importing
    # this module does not import amqtt (only the embedded mode needs it)
    if name == "LocalAuthPlugin":
        cls = _local_auth_plugin()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


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
        # amqtt is imported lazily (in _broker_class): only the embedded mode needs it
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # every client on this loopback-only broker is let in, but not as
            # "anonymous": amqtt keeps no offline queue for anonymous sessions, and
            # Kaiser's persistent session must get the QoS 1 messages sent while it
            # restarts (as it does with Mosquitto)
            "plugins": {"engine.adapters.broker.LocalAuthPlugin": {}},
        }
        broker = _broker_class()(config)
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
