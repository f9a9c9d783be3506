"""The device tracker (engine/devices.py) against the firmware twin of each
generation, in process: no broker. What the tracker sends must be what the real
boards accept (the twin parses like the firmware), and the tracker must read
what they answer."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from engine import codec
from engine.config import load_deployment
from engine.devices import DeviceTracker, Reply, items_of, tokens_from_env
from engine.firmware import Board, new_board
from engine.firmware.board import topic_matches
from engine.model import Deployment, Event

T0 = 1_796_000_000.0
K = "god"

DEVICES = """
devices:
  north:
    esp_id: ESP_00A1B2
    firmware: {north}
    sensors:
      air_temp: {{gpio: 14, type: DS18B20, onewire_address: 28FF641E8D3C0C79}}
      soil: {{gpio: 32, type: moisture}}
    actuators:
      heater: {{gpio: 18, type: relay}}
      fan: {{gpio: 19, type: relay}}
      vent: {{gpio: 25, type: pwm}}
"""


def deployment(tmp_path: Path, firmware: str = "auto", text: str = DEVICES) -> Deployment:
    d = tmp_path / f"rules-{firmware}-{abs(hash(text))}"
    d.mkdir(exist_ok=True)
    (d / "devices.yaml").write_text(text.format(north=firmware))
    dep, diags = load_deployment(d, "UTC")
    assert not [x for x in diags if x.is_error], [x.text() for x in diags]
    return dep


class Wire:
    """The tracker and some twins, joined as the broker would join them."""

    def __init__(self, tracker: DeviceTracker, boards: Iterable[Board], *, latched: set[str] | None = None) -> None:
        self.tracker = tracker
        self.boards = list(boards)
        self.events: list[Event] = []
        self.to_boards: list[codec.Outgoing] = []
        self.from_boards: list[codec.Outgoing] = []
        self.now = T0
        self.up = True  # False: the server is gone, nothing it would answer is sent

    def deliver(self, msgs: Iterable[codec.Outgoing]) -> None:
        """Server -> boards; whatever the boards answer goes back to the tracker."""
        for m in msgs:
            assert not m.retain or m.topic.endswith("/server/status"), f"{m.topic} published retained"
            self.to_boards.append(m)
            for b in self.boards:
                if any(topic_matches(f, m.topic) for f, _ in b.subscriptions()):
                    self.hear(b.receive(m.topic, m.payload, self.now, m.retain))

    def hear(self, msgs: Iterable[codec.Outgoing]) -> None:
        """Boards -> server."""
        for m in msgs:
            self.from_boards.append(m)
            if not self.up:
                continue
            msg = codec.decode(m.topic, m.payload, retained=m.retain, received_at=self.now)
            if isinstance(msg, codec.Heartbeat):
                self.apply(self.tracker.heartbeat(msg, self.now))
            elif isinstance(msg, codec.SessionAnnounce):
                self.tracker.announce(msg, self.now)
            elif isinstance(msg, codec.ConfigResponse):
                self.events.append(self.tracker.config_response(msg, self.now))
            elif not isinstance(msg, codec.Rejection):
                self.tracker.seen(msg.esp_id, self.now)

    def apply(self, reply: Reply) -> None:
        self.events.extend(reply.events)
        self.deliver(reply.messages)

    def boot(self) -> None:
        for b in self.boards:
            self.hear(b.connect(self.now))

    def run(self, seconds: float, step: float = 1.0) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for b in self.boards:
                self.hear(b.tick(self.now))
            self.apply(self.tracker.tick(self.now))

    def sent(self, tail: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.to_boards if m.topic.endswith(tail)]


def tracker(dep: Deployment, latched: set[str] | None = None, **kw) -> DeviceTracker:
    held = latched if latched is not None else set()
    return DeviceTracker(K, dep, latched=lambda d: "all" in held or d in held, **kw)


def board(generation: str, esp: str = "ESP_00A1B2", **kw) -> Board:
    return new_board(generation, esp, kaiser_id=K, now=T0, **kw)


GENERATIONS = ["legacy", "current"]


@pytest.mark.parametrize("gen", GENERATIONS)
def test_a_board_registers_gets_its_config_and_refuses_nothing(tmp_path: Path, gen: str) -> None:
    dep = deployment(tmp_path)
    w = Wire(tracker(dep), [board(gen)])
    w.boot()
    w.run(70)  # legacy's first heartbeat comes a minute after boot
    b = w.boards[0]
    assert b.refusals == []
    assert b.registered
    assert {g: a.type for g, a in b.actuators.items() if a.active} == {18: "relay", 19: "relay", 25: "pwm"}
    assert {g for g, s in b.sensors.items() if s.active} >= {14, 32}
    (ack, *_) = w.sent("/system/heartbeat/ack")
    assert ack["handover_epoch"] >= 1 and ack["status"] == "online"
    (cfg,) = w.sent("/config")
    assert cfg["correlation_id"].startswith("cfg-ESP_00A1B2-")
    # the board's answer is matched to the push by its correlation id (legacy: in order)
    answers = [e for e in w.events if e.kind == "config_response"]
    assert answers and all(e.severity == "info" for e in answers), [e.message for e in answers]
    assert all(e.data["correlation_id"] == cfg["correlation_id"] for e in answers)
    assert w.tracker.generation("ESP_00A1B2") == gen  # told apart by the heartbeat


def test_a_current_board_after_an_offline_spell_takes_only_its_own_epoch(tmp_path: Path) -> None:
    dep = deployment(tmp_path, "current")
    b = board("current")
    w = Wire(tracker(dep), [b])
    w.boot()
    w.run(70)
    assert b.registered
    status = f"kaiser/{K}/server/status"
    for spell in (1, 2):
        # the server says it goes away, long enough for the board to go offline
        w.hear(b.receive(status, codec.encode_server_status(K, online=False, timestamp=w.now,
                                                             reason="graceful_shutdown").payload, w.now))
        w.up = False
        w.run(200)
        assert b.safe_state and b.mode == "OFFLINE_ACTIVE"
        w.up = True
        # and comes back: the board counts a handover and takes only its own number
        w.hear(b.receive(status, codec.encode_server_status(K, online=True, timestamp=w.now).payload, w.now))
        refused_before = len(b.refusals)
        w.run(70)
        assert b.epoch == spell
        assert w.sent("/system/heartbeat/ack")[-1]["handover_epoch"] == spell
        assert b.registered and not b.safe_state and b.mode == "ONLINE"
        assert b.refusals[refused_before:] == []


@pytest.mark.parametrize("gen", GENERATIONS)
def test_removal_reaches_the_board_as_active_false(tmp_path: Path, gen: str) -> None:
    dep = deployment(tmp_path)
    w = Wire(tracker(dep), [board(gen)])
    w.boot()
    w.run(70)  # legacy's first heartbeat comes a minute after boot
    smaller = DEVICES.replace("      fan: {{gpio: 19, type: relay}}\n", "")
    w.apply(w.tracker.install(deployment(tmp_path, text=smaller), w.now))
    w.run(12)
    b = w.boards[0]
    last = w.sent("/config")[-1]
    assert {"gpio": 19, "actuator_type": "relay", "actuator_name": "fan", "active": False} in last["actuators"]
    assert b.refusals == []
    assert 19 not in {g for g, a in b.actuators.items() if a.active}
    assert {18, 25} <= {g for g, a in b.actuators.items() if a.active}


@pytest.mark.parametrize("gen", GENERATIONS)
def test_stop_latches_and_reset_clears_without_switching_anything_on(tmp_path: Path, gen: str) -> None:
    dep = deployment(tmp_path)
    held: set[str] = set()
    w = Wire(tracker(dep, held), [board(gen)])
    w.boot()
    w.run(70)  # legacy's first heartbeat comes a minute after boot
    b = w.boards[0]
    w.deliver([codec.encode_command(K, "ESP_00A1B2", 18, "relay", 1.0, 30)])
    assert b.actuators[18].state
    held.add("all")
    w.apply(w.tracker.emergency("all", "tank empty", w.now))
    assert b.latched and not any(a.state for a in b.actuators.values())
    w.deliver([codec.encode_command(K, "ESP_00A1B2", 18, "relay", 1.0, 30)])
    assert not b.actuators[18].state, "a latched board refuses commands"
    held.clear()
    w.apply(w.tracker.reset("all", w.now))
    w.run(10)  # current firmware refuses a clear within 5 s of the stop: the tracker waits
    assert not b.latched
    assert not any(a.state for a in b.actuators.values()), "a reset turns nothing on"
    w.deliver([codec.encode_command(K, "ESP_00A1B2", 18, "relay", 1.0, 30)])
    assert b.actuators[18].state
    assert [r for r in b.refusals if r[0] == "emergency"] == []


@pytest.mark.parametrize("gen", GENERATIONS)
def test_a_board_that_reboots_during_a_stop_gets_the_stop_before_anything_else(tmp_path: Path, gen: str) -> None:
    dep = deployment(tmp_path)
    held: set[str] = set()
    w = Wire(tracker(dep, held), [board(gen)])
    w.boot()
    w.run(70)  # legacy's first heartbeat comes a minute after boot
    b = w.boards[0]
    target = "north" if gen == "current" else "all"  # legacy acts only on the broadcast
    held.add(target)
    w.apply(w.tracker.emergency(target, "smoke", w.now))
    assert b.latched
    w.run(100)
    mark = len(w.to_boards)
    w.hear(b.reboot(w.now))
    w.run(70)  # legacy heartbeats a minute after boot
    after = [m.topic for m in w.to_boards[mark:]]
    assert after[0].endswith("/actuator/emergency" if gen == "current" else "/broadcast/emergency"), after
    # current keeps its actuators across a reboot and is latched again; legacy forgot
    # them, and gets no config (which would bring them back unlatched) until the reset
    assert b.latched if gen == "current" else not [a for a in b.actuators.values() if a.active]
    assert not [m for m in w.to_boards[mark:] if m.topic.endswith("/config")], "no config while stopped"


def test_a_forged_heartbeat_with_uptime_going_back_gets_the_stop_not_a_config(tmp_path: Path) -> None:
    dep = deployment(tmp_path, "legacy")
    held: set[str] = set()
    w = Wire(tracker(dep, held), [board("legacy")])
    w.boot()
    w.run(70)
    b = w.boards[0]
    held.add("all")
    w.apply(w.tracker.emergency("all", "flood", w.now))
    mark = len(w.to_boards)
    forged = codec.encode_heartbeat(K, "ESP_00A1B2", ts=3000, uptime=3, generation="legacy")
    w.hear([forged])
    topics = [m.topic for m in w.to_boards[mark:]]
    assert not [t for t in topics if t.endswith("/config")]
    assert "kaiser/broadcast/emergency" in topics  # the one stop legacy firmware acts on
    assert b.latched, "a config push would have cleared a legacy latch"


def test_a_big_device_is_split_into_pushes_a_legacy_board_takes(tmp_path: Path) -> None:
    probes = "".join(f"      probe_in_bed_{i}_at_the_far_end_of_the_house: {{{{gpio: {g}, type: DS18B20, "
                     f"onewire_address: 28FF641E8D3C0C{i:02X}}}}}\n" for i, g in enumerate((14, 15, 16, 17, 23)))
    relays = "".join(f"      relay_for_the_bed_{i}_irrigation: {{{{gpio: {g}, type: relay}}}}\n"
                     for i, g in enumerate((5, 18, 19, 25, 26, 27)))
    text = ("devices:\n  big:\n    esp_id: ESP_00A1B2\n    firmware: {north}\n"
            "    sensors:\n" + probes + "      soil: {{gpio: 32, type: moisture}}\n    actuators:\n" + relays)
    dep = deployment(tmp_path, "legacy", text)
    sensors, actuators = (list(x.values()) for x in items_of(dep.devices["big"]))
    whole = codec.encode_configs(K, "ESP_00A1B2", sensors, actuators, iter(["x" * 30]), generation="current")
    assert len(whole[0].payload) + len(whole[0].topic) > 2048  # would not fit legacy's packet
    w = Wire(tracker(dep), [board("legacy")])
    w.boot()
    w.run(70)
    b = w.boards[0]
    pushes = w.sent("/config")
    assert len(pushes) > 1
    assert len({p["correlation_id"] for p in pushes}) == len(pushes)
    assert b.refusals == []
    assert len([a for a in b.actuators.values() if a.active]) == 6
    assert len([s for s in b.sensors.values() if s.active]) == 6


def test_unknown_boards_wait_for_approval_and_are_capped(tmp_path: Path) -> None:
    t = tracker(deployment(tmp_path), max_unknown=50)
    for i in range(2000):
        hb = codec.decode(*codec.encode_heartbeat(K, f"ESP_{0xB0000 + i:06X}", ts=1, uptime=1)[:2],
                          received_at=T0 + i)
        assert isinstance(hb, codec.Heartbeat)
        r = t.heartbeat(hb, T0 + i)
        assert json.loads(r.messages[0].payload)["status"] == "pending_approval"
        assert not [m for m in r.messages if m.topic.endswith("/config")]
    assert len(t.unknown) == 50 and t.unknown_evicted == 1950
    assert t.summary()["unknown"] == 50


def test_heartbeats_are_answered_at_most_once_a_second_and_pushes_rate_limited(tmp_path: Path) -> None:
    t = tracker(deployment(tmp_path))
    raw = codec.encode_heartbeat(K, "ESP_00A1B2", ts=1, uptime=100)
    acks = pushes = 0
    for i in range(100):
        now = T0 + i * 0.1
        hb = codec.decode(raw.topic, raw.payload, received_at=now)
        assert isinstance(hb, codec.Heartbeat)
        r = t.heartbeat(hb, now)
        acks += sum(m.topic.endswith("/ack") for m in r.messages)
        pushes += sum(m.topic.endswith("/config") for m in r.messages)
    assert acks == 10 and pushes == 1


def test_what_boards_were_sent_survives_a_restart_so_removals_still_reach_them(tmp_path: Path) -> None:
    dep = deployment(tmp_path)
    b = board("current")
    w = Wire(tracker(dep), [b])
    w.boot()
    w.run(70)  # legacy's first heartbeat comes a minute after boot
    snap = json.loads(json.dumps(w.tracker.snapshot()))
    smaller = DEVICES.replace("      vent: {{gpio: 25, type: pwm}}\n", "")
    t2 = tracker(deployment(tmp_path, text=smaller))
    t2.restore(snap)
    w.tracker = t2
    w.run(70)  # the next heartbeat is acked and the config follows
    assert 25 not in {g for g, a in b.actuators.items() if a.active}
    assert b.refusals == []


def test_emergency_tokens_come_from_the_environment(tmp_path: Path) -> None:
    text = DEVICES.replace("    firmware: {north}\n", "    firmware: {north}\n    emergency_token_env: NORTH_TOKEN\n")
    dep = deployment(tmp_path, "current", text)
    tokens, problems = tokens_from_env(dep, {"NORTH_TOKEN": "s3cret"})
    assert tokens == {"north": "s3cret"} and problems == []
    _, problems = tokens_from_env(dep, {})
    assert problems and "NORTH_TOKEN" in problems[0]
    held: set[str] = set()
    good = Wire(tracker(dep, held, tokens=tokens), [board("current", emergency_token="s3cret")])
    good.boot()
    held.add("north")
    good.apply(good.tracker.emergency("north", "smoke", good.now))
    assert good.boards[0].latched
    bad_held: set[str] = set()
    bad = Wire(tracker(dep, bad_held), [board("current", emergency_token="s3cret")])
    bad.boot()
    bad_held.add("north")
    bad.apply(bad.tracker.emergency("north", "smoke", bad.now))
    assert not bad.boards[0].latched  # the esp id is not its token
    assert any(r[0] == "emergency" for r in bad.boards[0].refusals)


def test_a_device_stop_on_a_legacy_board_says_the_server_holds_the_latch(tmp_path: Path) -> None:
    dep = deployment(tmp_path, "legacy")
    t = tracker(dep, {"north"})
    r = t.emergency("north", "smoke", T0)
    assert not [m for m in r.messages if m.topic.endswith("/actuator/emergency")]  # unreachable in legacy
    assert r.events and "server holds the latch" in r.events[0].message


def test_a_snapshot_does_not_change_when_the_tracker_goes_on(tmp_path: Path) -> None:
    dep = deployment(tmp_path)
    w = Wire(tracker(dep), [board("current")])
    w.boot()
    w.run(10)
    snap = w.tracker.snapshot()
    frozen = json.dumps(snap, sort_keys=True)
    smaller = DEVICES.replace("      vent: {{gpio: 25, type: pwm}}\n", "")
    w.apply(w.tracker.install(deployment(tmp_path, text=smaller), w.now))
    w.run(10)
    assert json.dumps(snap, sort_keys=True) == frozen  # the store may still be encoding it
    assert json.dumps(w.tracker.snapshot(), sort_keys=True) != frozen
