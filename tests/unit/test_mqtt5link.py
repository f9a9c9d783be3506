"""engine/adapters/mqtt5link.py without a network: the publish side's bookkeeping
(one write per event-loop turn, the broker's receive maximum, what goes again after
a reconnect) on a transport that records what it is given."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import mqtt5
import pytest

from engine.adapters.mqtt import Publish, describe, parse_url, tls_context
from engine.adapters.mqtt5link import Mqtt5Link, choose, lane_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def packets(self) -> list[Any]:
        data = b"".join(self.writes)
        out, pos = [], 0
        while pos < len(data):
            p, n = mqtt5.read(memoryview(data)[pos:])
            out.append(p)
            pos += n
        return out


def connected(receive_max: int = 65535) -> tuple[Mqtt5Link, Transport]:
    got: list[Any] = []
    link = Mqtt5Link("mqtt://127.0.0.1:1", "t", [], got.extend)
    t = Transport()
    link._transport = t  # type: ignore[assignment]
    link._receive_max = receive_max
    link.connected = True
    return link, t


async def test_publishes_of_one_turn_leave_in_one_write() -> None:
    link, t = connected()
    for i in range(5):
        link.publish((f"k/{i}", b"x", 1, False))
    await asyncio.sleep(0)
    assert len(t.writes) == 1
    assert [p.topic for p in t.packets()] == [f"k/{i}" for i in range(5)]


async def test_a_read_answers_in_the_same_write_as_its_acks() -> None:
    """Messages read together are handed over together; what the handler publishes
    and the PUBACKs of what it read leave in one write after it returned."""
    link, t = connected()
    seen: list[Any] = []

    def handle(items: list[Any]) -> None:
        seen.append(len(items))
        link.publish(("cmd", b"ON", 1, False))

    link.on_batch = handle
    link._feed(b"".join(mqtt5.PublishPacket(f"in/{i}", b"1", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=i + 1).write()
                        for i in range(3)))
    assert seen == [3]
    assert len(t.writes) == 1
    kinds = [type(p).__name__ for p in t.packets()]
    assert kinds == ["PublishPacket", "PubAckPacket", "PubAckPacket", "PubAckPacket"]


async def test_the_receive_maximum_holds_back_the_rest_in_order() -> None:
    link, t = connected(receive_max=2)
    for i in range(5):
        link.publish((f"k/{i}", b"x", 1, False))
    await asyncio.sleep(0)
    sent = t.packets()
    assert [p.topic for p in sent] == ["k/0", "k/1"]
    t.writes.clear()
    link._feed(mqtt5.PubAckPacket(sent[0].packet_id).write())  # room for one more
    assert [p.topic for p in t.packets()] == ["k/2"]
    assert len(link._inflight) == 2 and len(link._queue) == 2


async def test_what_was_in_flight_goes_again_after_a_reconnect() -> None:
    link, t = connected(receive_max=2)
    for i in range(3):
        link.publish((f"k/{i}", b"x", 1, False))
    await asyncio.sleep(0)
    first = {p.topic: p.packet_id for p in t.packets()}
    t2 = Transport()
    link._transport = t2  # type: ignore[assignment]
    link._in_read = True  # collect, then look (as inside a read)
    link._resend(session_present=True)
    link._drain()
    again = t2.packets() if t2.writes else [mqtt5.read(memoryview(b))[0] for b in link._out]
    assert [p.topic for p in again] == ["k/0", "k/1"]
    assert all(p.duplicate for p in again)
    assert {p.topic: p.packet_id for p in again} == first  # same ids: the broker can match them


async def test_stale_messages_in_flight_are_not_sent_again() -> None:
    link, t = connected()
    link.max_queue_age = 0.0
    link.publish(("cmd", b"ON", 1, False))
    link.publish(("status", b"online", 1, True))
    await asyncio.sleep(0.01)
    t.writes.clear()
    link._resend(session_present=False)
    await asyncio.sleep(0)
    assert [p.topic for p in t.packets()] == ["status"]  # the retained one only
    assert link.dropped == 1


def test_tls_and_unknown_modes_choose_a_client() -> None:
    assert choose("mqtt://h", "auto") == "mqtt5"
    assert choose("mqtts://h", "auto") == "mqtt5"
    assert choose("mqtts://h", "mqtt5") == "mqtt5"
    assert choose("mqtts://h", "aiomqtt") == "aiomqtt"
    assert choose("mqtts://h", "process") == "mqtt5"  # the reader process has no TLS
    assert choose("mqtt://h", "process") == "process"
    assert choose("mqtt://h", "aiomqtt") == "aiomqtt"
    assert choose("mqtt://h", "nonsense") == "mqtt5"


def test_mqtts_is_tls_that_checks_the_certificate_and_the_host_name() -> None:
    assert tls_context("mqtt://h:1883") is None
    ctx = tls_context("mqtts://broker.example")
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert parse_url("mqtts://broker.example") == ("broker.example", 8883)
    assert Mqtt5Link("mqtts://h", "k", [], lambda items: None).tls is not None
    assert Mqtt5Link("mqtt://h", "k", [], lambda items: None).tls is None


def test_an_untrusted_broker_certificate_reads_the_same_from_either_client() -> None:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                          "unable to get local issuer certificate (_ssl.c:1006)")
    exc.verify_message = "unable to get local issuer certificate"
    as_text = Exception(str(exc))  # aiomqtt hands it on as MqttError(str(exc))
    assert describe(exc) == describe(as_text)
    assert describe(exc).startswith("TLS: the broker's certificate was not accepted (certificate verify failed: "
                                    "unable to get local issuer certificate)")
    assert describe(ConnectionRefusedError(111, "Connection refused")) == "[Errno 111] Connection refused"
    assert describe(TimeoutError()) == "TimeoutError"


async def test_a_smaller_window_after_a_reconnect_keeps_the_order() -> None:
    """Four in flight, the broker now allows two: two go again, the other two and
    the on_connect message wait in order; nothing exceeds the window."""
    link, _t = connected(receive_max=10)
    for i in range(4):
        link.publish((f"k/{i}", b"x", 1, False))
    await asyncio.sleep(0)
    t2 = Transport()
    link._transport = t2  # type: ignore[assignment]
    link._receive_max = 2
    link._resend(session_present=True, first=[Publish("status", b"online", 1, True)])
    await asyncio.sleep(0)
    sent = t2.packets()
    assert [p.topic for p in sent] == ["k/0", "k/1"]
    assert [m.topic for _at, m in link._queue] == ["k/2", "k/3", "status"]
    t2.writes.clear()
    link._feed(mqtt5.PubAckPacket(sent[0].packet_id).write())
    assert [p.topic for p in t2.packets()] == ["k/2"]
    assert len(link._inflight) == 2


def test_a_board_always_takes_the_same_lane_and_broadcasts_the_main_one() -> None:
    """lane_of: by esp id only (every topic of one board, the same in every run),
    spread over all connections; topics of no single board on the main one (0)."""
    boards = [f"ESP_{i:06X}" for i in range(300)]
    picks = {b: lane_of(f"kaiser/god/esp/{b}/actuator/5/command", 3) for b in boards}
    assert set(picks.values()) == {0, 1, 2, 3}
    assert min(list(picks.values()).count(i) for i in range(4)) > 40  # roughly even
    for b in boards[:20]:
        for topic in ("config", "system/heartbeat/ack", "actuator/emergency", "actuator/18/command"):
            assert lane_of(f"kaiser/god/esp/{b}/{topic}", 3) == picks[b]
    assert lane_of("kaiser/broadcast/emergency", 3) == 0
    assert lane_of("kaiser/god/server/status", 3) == 0
    assert lane_of("kaiser/god/esp/ESP_ABCDEF/config", 0) == 0
    assert lane_of("kaiser/god/esp/ESP_00012C/config", 3) == 3  # crc32: stable across runs and machines
