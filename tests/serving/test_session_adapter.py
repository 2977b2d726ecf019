"""Session, the asyncio adapter of SessionMachine: its actions reach the worker and the rooms, and the answers
of the handshake steps come back as events. No sockets: a recording worker and the in-memory rooms."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

import msgpack
import numpy as np
from serving_helpers import CODEC, INFO

from xcodec_stream.serving.arrays import pack_array
from xcodec_stream.serving.config import ServerConfig
from xcodec_stream.serving.rooms import RoomRegistry
from xcodec_stream.serving.sessions import Session
from xcodec_stream.serving.worker import StepResult, WorkerFull


class RecordingWorker:
    """The Worker calls a Session makes, recorded; `open` answers at once (or raises `full`)."""

    last_tick_ms, last_batch = 2.0, 1

    def __init__(self, full: bool = False) -> None:
        self.calls: list[tuple] = []
        self.full = full

    def open(self, sid, spec) -> Future:
        self.calls.append(("open", sid, spec.mode))
        if self.full:
            raise WorkerFull("no free slot")
        fut: Future = Future()
        fut.set_result(INFO)
        return fut

    def attach_listener(self, *args) -> Future:
        self.calls.append(("attach_listener", *args))
        fut: Future = Future()
        fut.set_result(None)
        return fut

    def __getattr__(self, name: str):
        if name not in ("push_audio", "push_codes", "flush", "close", "detach_listener"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))


def frame(**msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def session(sid: int, worker, rooms: RoomRegistry, sessions: dict) -> Session:
    s = Session(sid, config=ServerConfig(), codec=CODEC, worker=worker, rooms=rooms, sessions=sessions)
    sessions[sid] = s
    return s


def drain(s: Session) -> list[dict]:
    out = []
    while (msg := s.out.pop()) is not None:
        out.append(msg)
    return out


async def test_loopback_through_the_adapter() -> None:
    worker, sessions = RecordingWorker(), {}
    s = session(1, worker, RoomRegistry(), sessions)
    await s.handle(frame(type="hello", version=1, mode="loopback", stats_interval_ms=100))
    assert s.state == "ready" and [m["type"] for m in drain(s)] == ["ready"]
    pcm = np.zeros(320, "<f4")
    await s.handle(frame(type="audio", seq=0, pcm=pack_array(pcm)))
    assert worker.calls[0] == ("open", 1, "loopback") and worker.calls[1][:3] == ("push_audio", 1, 0)
    s.on_result(StepResult(seq_end=0, consumed=320, sample=0, audio=pcm))
    await asyncio.sleep(0.15)  # the stats timer fired once
    got = drain(s)
    assert [m["type"] for m in got] == ["audio", "stats"]
    assert got[1]["worker_tick_ms"] == 2.0 and got[1]["sessions"] == 1
    s.close()
    assert worker.calls[-1] == ("close", 1)
    await asyncio.wait({s._stats_task}, timeout=1)
    assert s._stats_task.cancelled()


async def test_open_failure_closes() -> None:
    s = session(1, RecordingWorker(full=True), RoomRegistry(), {})
    await s.handle(frame(type="hello", version=1, mode="encode"))
    assert s.closing.is_set() and (s.close_code, s.close_reason) == (1013, "server_full")
    assert [m["code"] for m in drain(s)] == ["server_full"]


async def test_a_room_through_the_adapters() -> None:
    worker, rooms, sessions = RecordingWorker(), RoomRegistry(), {}
    pub = session(1, worker, rooms, sessions)
    await pub.handle(frame(type="hello", version=1, mode="publish", room="r"))
    lis = session(2, worker, rooms, sessions)
    await lis.handle(frame(type="hello", version=1, mode="listen", room="r", want=["codes", "audio"]))
    assert ("attach_listener", 1, 2, 16000, "f32") in worker.calls
    assert [m["type"] for m in drain(lis)] == ["ready", "room"]
    codes, pcm = np.zeros((4, 2), "<u2"), np.zeros(640, "<f4")
    pub.on_result(StepResult(seq_end=0, frame=0, codes=codes, listeners={2: (0, pcm)}))
    assert [m["type"] for m in drain(lis)] == ["codes", "audio"]
    pub.close()  # the publisher leaves: its listener gets `done` and is closed with 4010
    assert rooms.get("r") is None and lis.closing.is_set() and lis.close_reason == "publisher_left"
    assert drain(lis)[-1]["reason"] == "publisher_left"
    lis.close()
    assert ("detach_listener", 1, 2) not in worker.calls  # the room was gone: nothing to detach from
