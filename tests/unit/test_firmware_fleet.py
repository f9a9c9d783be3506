"""TwinFleet: twins of both generations on the in-process broker, driven on a virtual
clock. (The broker is amqtt in this process: no Mosquitto needed.)"""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from engine.adapters.broker import EmbeddedBroker
from engine.adapters.mqtt import parse_url
from engine.firmware import new_board
from engine.firmware.mqtt import TwinFleet

T0 = 1_796_000_000.0
CUR, LEG = "ESP_C0FFEE", "ESP_1E6AC7"


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


async def until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.mark.timeout(60)
def test_fleet_routes_each_boards_own_subscriptions_and_publishes_its_answers() -> None:
    async def main() -> None:
        clock = Clock()
        async with EmbeddedBroker() as broker:
            host, port = parse_url(broker.url)
            seen: list[tuple[str, dict[str, object], bool]] = []
            async with aiomqtt.Client(host, port, identifier="server") as server:
                await server.subscribe("kaiser/god/esp/#", qos=1)

                async def listen() -> None:
                    async for m in server.messages:
                        seen.append((m.topic.value, json.loads(m.payload), bool(m.retain)))  # type: ignore[arg-type]

                listener = asyncio.create_task(listen())
                boards = [new_board("current", CUR, now=T0), new_board("legacy", LEG, now=T0)]
                fleet = TwinFleet(boards, broker.url, now=clock, auto_tick=False)
                tapped: list = []  # type: ignore[type-arg]
                fleet.taps.append(lambda b, o: tapped.append((b, o)))
                stop = asyncio.Event()
                run = asyncio.create_task(fleet.run(stop))
                await until(lambda: any(t.endswith(f"{CUR}/system/heartbeat") for t, _, _ in seen))
                # the server acks with the board's epoch (1 when it reports 0)
                await server.publish(f"kaiser/god/esp/{CUR}/system/heartbeat/ack", json.dumps(
                    {"status": "online", "config_available": False, "server_time": int(T0), "handover_epoch": 1}),
                    qos=1)
                await until(lambda: fleet.boards[CUR].registered)
                config = {"correlation_id": "c1", "sensors": [{"gpio": 32, "sensor_type": "ph", "sensor_name": "p"}],
                          "actuators": [{"gpio": 5, "actuator_type": "relay", "actuator_name": "fan"}]}
                for esp in (CUR, LEG):
                    await server.publish(f"kaiser/god/esp/{esp}/config", json.dumps(config), qos=1)
                await until(lambda: all(5 in b.actuators for b in fleet.boards.values()))
                for esp in (CUR, LEG):
                    await server.publish(f"kaiser/god/esp/{esp}/actuator/5/command", b'{"command":"ON","value":1.0}',
                                         qos=1)
                await until(lambda: all(b.actuators[5].state for b in fleet.boards.values()))
                await until(lambda: any(t.endswith(f"{LEG}/actuator/5/response") for t, _, _ in seen))
                # legacy answers were published retained (QoS 0)
                assert tapped and all((o.qos, o.retain) == (0, True) for b, o in tapped
                                      if b.esp_id == LEG and "/actuator/" in o.topic)
                # virtual time: 60 s later the legacy board sends its first heartbeat
                clock.t = T0 + 61
                await fleet.advance()
                await until(lambda: any(t.endswith(f"{LEG}/system/heartbeat") for t, _, _ in seen))
                # the broadcast stop latches both
                await server.publish("kaiser/broadcast/emergency", json.dumps(
                    {"command": "stop_all", "reason": "test", "issued_by": "kaiser",
                     "timestamp": "2026-11-30T17:00:00Z"}), qos=1)
                await until(lambda: all(b.latched for b in fleet.boards.values()))
                # a reboot sends the will (retained) and the board comes back
                await fleet.reboot(CUR)
                await until(lambda: any(t.endswith(f"{CUR}/system/will") for t, _, _ in seen))
                assert not fleet.boards[CUR].latched and not fleet.boards[CUR].registered
                stop.set()
                await run
                listener.cancel()

    asyncio.run(main())
