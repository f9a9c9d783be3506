"""The embedded broker (``mqtt.url = "embedded"``, laptops and `kaiser demo`) must
behave like Mosquitto where Kaiser relies on it."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from engine.adapters.broker import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def test_a_persistent_session_gets_what_was_sent_while_it_was_away_as_live_messages() -> None:
    async with EmbeddedBroker() as b:
        async with aiomqtt.Client(b.host, b.port, identifier="kaiser-under-test", clean_session=False) as c:
            await c.subscribe("kaiser/god/esp/+/sensor/+/data", qos=1)
        async with aiomqtt.Client(b.host, b.port, identifier="board") as board:
            await board.publish("kaiser/god/esp/ESP_00A1B2/sensor/4/data", b'{"raw": 480}', qos=1)
        async with aiomqtt.Client(b.host, b.port, identifier="kaiser-under-test", clean_session=False) as c:
            async with asyncio.timeout(5):
                async for m in c.messages:
                    assert m.topic.value == "kaiser/god/esp/ESP_00A1B2/sensor/4/data"
                    assert m.payload == b'{"raw": 480}'
                    # queued while away is not a broker snapshot: it must fire rules
                    assert m.retain is False
                    break
