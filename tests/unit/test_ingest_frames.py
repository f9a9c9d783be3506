"""The pipe between the ingest reader and the server: frames survive any split of
the byte stream, and the items a reader makes are what the server expects."""

from __future__ import annotations

import json
import marshal

from hypothesis import given
from hypothesis import strategies as st

from engine import codec
from engine.adapters.ingest import _BATCH, _STATE, _frame, _Frames, item


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20), st.lists(st.integers(1, 64), max_size=50))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(_frame(_BATCH if i % 2 else _STATE, b) for i, b in enumerate(bodies))
    frames = _Frames()
    got: list[tuple[int, bytes]] = []
    pos = 0
    for n in cuts:
        got += frames.feed(stream[pos:pos + n])
        pos += n
    got += frames.feed(stream[pos:])
    assert got == [(_BATCH if i % 2 else _STATE, b) for i, b in enumerate(bodies)]
    assert frames.rest == b""


def test_a_reading_is_decoded_by_the_reader_and_anything_else_is_passed_on() -> None:
    payload = json.dumps({"esp_id": "ESP_00A1B2", "gpio": 4, "sensor_type": "DS18B20", "raw": 480,
                          "raw_mode": True, "ts": 1_795_000_000, "seq": 7}).encode()
    it = item("kaiser/god/esp/ESP_00A1B2/sensor/4/data", payload, True, 1_795_000_001.0)
    assert marshal.loads(marshal.dumps(it)) == it  # plain data only
    kind, topic, esp, retained, values = it
    assert (kind, topic, esp, retained) == ("r", "kaiser/god/esp/ESP_00A1B2/sensor/4/data", "ESP_00A1B2", True)
    v = codec.SensorValue._make(values[0])
    assert (v.gpio, v.sensor_type, v.raw, v.raw_mode, v.seq, v.ts) == (4, "ds18b20", 480.0, True, 7, 1_795_000_000)
    hb = item("kaiser/god/esp/ESP_00A1B2/system/heartbeat", b"{}", False, 1.0)
    junk = item("kaiser/god/esp/ESP_00A1B2/sensor/4/data", b"{nope", False, 1.0)
    assert hb == ("m", "kaiser/god/esp/ESP_00A1B2/system/heartbeat", b"{}", False)
    assert junk == ("m", "kaiser/god/esp/ESP_00A1B2/sensor/4/data", b"{nope", False)


def test_batches_the_server_reads_together_are_handled_as_one_in_order_and_all_acknowledged() -> None:
    """A busy server finds several of the reader's batches in one read: the rules get
    them as one batch (cheaper a reading), in the reader's order; a state change
    between them keeps its place; the note acknowledges the last batch."""
    import asyncio

    from engine.adapters.ingest import _ChildLink

    class Owner:
        batches = received = 0

        def __init__(self) -> None:
            self.calls: list[list[tuple[object, ...]]] = []
            self.states: list[tuple[bool, int]] = []

        def on_batch(self, items: list[tuple[object, ...]]) -> None:
            self.calls.append(items)

        def _set_state(self, up: bool) -> None:
            self.states.append((up, len(self.calls)))

    class Pipe:
        def __init__(self) -> None:
            self.out = b""

        def write(self, data: bytes) -> None:
            self.out += data

        def is_closing(self) -> bool:
            return False

    async def run() -> tuple[Owner, _ChildLink, Pipe]:
        owner = Owner()
        link = _ChildLink(owner)  # type: ignore[arg-type]
        pipe = Pipe()
        link.transport = pipe  # type: ignore[assignment]
        m = [("m", f"t/{i}", b"x", False) for i in range(5)]
        link.data_received(_frame(_BATCH, marshal.dumps((1, m[:2]))) + _frame(_BATCH, marshal.dumps((2, m[2:3])))
                           + _frame(_STATE, b"1") + _frame(_BATCH, marshal.dumps((3, m[3:]))))
        await asyncio.sleep(0.05)  # the acknowledgement note leaves after ACK_DELAY
        return owner, link, pipe

    owner, link, pipe = asyncio.run(run())
    assert owner.calls == [[("m", "t/0", b"x", False), ("m", "t/1", b"x", False), ("m", "t/2", b"x", False)],
                           [("m", "t/3", b"x", False), ("m", "t/4", b"x", False)]]
    assert owner.states == [(True, 1)]
    assert (owner.batches, owner.received, link.handled) == (3, 5, 3)
    assert _Frames().feed(pipe.out)[-1][1] == (3).to_bytes(8, "big")
