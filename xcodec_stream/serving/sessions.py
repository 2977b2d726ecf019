"""One connection's session on the event loop: feeds its SessionMachine events and carries out the actions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .config import ServerConfig
from .metrics import Metrics
from .protocol import Hello, ProtocolError, error_message, pack
from .rooms import RoomRegistry
from .session_core import CodecInfo, ServerFigures, SessionMachine
from .session_events import (
    Action,
    AttachListener,
    BroadcastCodes,
    ClaimRoom,
    Close,
    Closed,
    CloseStream,
    DetachListener,
    EndRoom,
    Event,
    Failed,
    FlushStream,
    JoinRoom,
    LeaveRoom,
    ListenerAttached,
    OpenRoom,
    OpenStream,
    PushAudio,
    PushCodes,
    Received,
    Result,
    RoomClaimed,
    RoomData,
    RoomEnded,
    RoomJoined,
    RoomOpened,
    SendRoomAudio,
    Shutdown,
    StartStats,
    StatsDue,
    StepFailed,
    StopStats,
    StreamOpened,
    UnclaimRoom,
)
from .worker import StepResult, Worker, WorkerFull

__all__ = ["Session", "error_close"]


def _machine_attr(name: str, *, settable: bool = False) -> property:
    """A SessionMachine attribute seen through the Session (the server, rooms and metrics read these)."""

    def get(self: Session) -> Any:
        return getattr(self.machine, name)

    def put(self: Session, value: Any) -> None:
        setattr(self.machine, name, value)

    return property(get, put if settable else None, doc=f"SessionMachine.{name}")


class Session:
    """The asyncio adapter of a SessionMachine: client frames (`handle`), worker output (`on_result`), room
    traffic, shutdown and teardown become events; the actions become Worker and RoomRegistry calls, the
    `stats_interval_ms` timer and `closing` (set with close_code: the server then drains `out` and closes).

    Handshake steps that wait (a worker slot, a room in a cluster) are awaited inside `handle`, as before: the
    server reads the connection's next frame only once the hello is answered.
    """

    out = _machine_attr("out")
    log = _machine_attr("log")
    state = _machine_attr("state")
    mode = _machine_attr("mode")
    rate = _machine_attr("rate")
    want_audio = _machine_attr("want_audio")
    want_codes = _machine_attr("want_codes")
    close_code = _machine_attr("close_code")
    close_reason = _machine_attr("close_reason")
    lag_ms = _machine_attr("lag_ms")
    busy = _machine_attr("busy")
    drained = _machine_attr("drained")
    done_msg = _machine_attr("done_msg")
    done_sent = _machine_attr("done_sent")
    token = _machine_attr("token", settable=True)
    attached = _machine_attr("attached", settable=True)

    def __init__(
        self,
        sid: int,
        *,
        config: ServerConfig,
        codec: CodecInfo,
        worker: Worker,
        rooms: RoomRegistry,
        sessions: dict[int, Session],
        metrics: Metrics | None = None,
    ) -> None:
        self.sid = sid
        self.worker = worker
        self.rooms = rooms
        self.sessions = sessions
        self.machine = SessionMachine(
            sid, config=config, codec=codec, node=rooms.node, metrics=metrics, figures=self._figures
        )
        self.closing = asyncio.Event()
        self._stats_task: asyncio.Task | None = None
        self._steps: dict[type, Callable[[Any], Awaitable[Event]]] = {
            ClaimRoom: self._claim_room,
            OpenStream: self._open_stream,
            OpenRoom: self._open_room,
            JoinRoom: self._join_room,
            AttachListener: self._attach_listener,
        }

    def _figures(self) -> ServerFigures:
        return ServerFigures(self.worker.last_tick_ms, self.worker.last_batch, len(self.sessions))

    # ------------------------------------------------------------------ events
    async def handle(self, data: bytes | str) -> None:
        """Process one client frame (and the handshake steps it starts). Errors become `error` messages."""
        actions = self.machine.feed(Received(data))
        while actions:
            step = self._steps.get(type(actions[-1]))  # a step comes last: the machine waits for its answer
            if step is None:
                self._apply(actions)
                return
            self._apply(actions[:-1])
            actions = self.machine.feed(await step(actions[-1]))

    def on_result(self, r: StepResult) -> None:
        self._apply(self.machine.feed(Result(r)))

    def room_data(self, msg: dict, duration_ms: float) -> None:
        self._apply(self.machine.feed(RoomData(msg, duration_ms)))

    def room_ended(self, reason: str) -> None:
        self._apply(self.machine.feed(RoomEnded(reason)))

    def fail(self, err: ProtocolError) -> None:
        """Queue the error; if fatal, mark the session for closing with the error's close code."""
        self._apply(self.machine.feed(Failed(err)))

    def begin_shutdown(self) -> None:
        """The server stops: flush the stream as if the client had sent `flush` (its output and `done` follow)."""
        self._apply(self.machine.feed(Shutdown()))

    def close(self) -> None:
        """Session over: free the worker slots, leave or end the room. Idempotent."""
        self._apply(self.machine.feed(Closed()))

    def sending(self, msg: dict) -> None:
        self.machine.sending(msg)

    def check_resume(self, hello: Hello) -> None:
        self.machine.check_resume(hello)

    def resume_front(self, hello: Hello) -> list[tuple[dict, float]]:
        return self.machine.resume_front(hello)

    def stats_message(self) -> dict:
        return self.machine.stats_message()

    # ------------------------------------------------------------------ actions
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            self._execute(action)

    def _execute(self, action: Action) -> None:
        sid, worker = self.sid, self.worker
        match action:
            case PushAudio(seq, pcm):
                worker.push_audio(sid, seq, pcm)
            case PushCodes(frame, codes):
                worker.push_codes(sid, frame, codes)
            case FlushStream():
                worker.flush(sid)
            case CloseStream():
                worker.close(sid)
            case DetachListener(publisher):
                worker.detach_listener(publisher, sid)
            case LeaveRoom(name):
                self.rooms.leave(name, self)
            case UnclaimRoom(name):
                self.rooms.unclaim(name, self)
            case EndRoom(name, reason):
                self.rooms.end(name, reason)
            case BroadcastCodes(room, frame, codes, frame_ms):
                room.broadcast_codes(frame, codes, frame_ms)
            case SendRoomAudio(room, listeners):
                rates = {lid: m.rate for lid, m in room.listeners.items()}
                room.send_audio({k: v for k, v in listeners.items() if k in rates}, rates)
            case StartStats(interval_ms):
                self._stats_task = asyncio.get_running_loop().create_task(self._periodic_stats(interval_ms))
            case StopStats():
                if self._stats_task is not None:
                    self._stats_task.cancel()
            case Close():
                self.closing.set()
            case _:
                raise TypeError(f"{type(action).__name__} is a handshake step: it runs only within handle()")

    async def _periodic_stats(self, interval_ms: int) -> None:
        machine = self.machine
        while machine.state != "closed" and machine.close_code is None:
            await asyncio.sleep(interval_ms / 1000.0)
            self._apply(machine.feed(StatsDue()))

    # ------------------------------------------------------------------ handshake steps (answer an event)
    async def _claim_room(self, action: ClaimRoom) -> Event:
        try:
            await self.rooms.claim(action.name, self)
        except ProtocolError as err:
            return StepFailed(err)
        return RoomClaimed()

    async def _open_stream(self, action: OpenStream) -> Event:
        try:
            fut = self.worker.open(self.sid, action.spec)
        except WorkerFull as exc:
            return StepFailed(ProtocolError("server_full", str(exc)))
        try:  # (cancelled with the connection: the worker then drops the open and frees its slots)
            info = await asyncio.wrap_future(fut)
        except WorkerFull as exc:  # an engine process answers "full" through the future
            return StepFailed(ProtocolError("server_full", str(exc)))
        except Exception as exc:
            return StepFailed(ProtocolError("internal", f"could not open the stream: {exc}"))
        return StreamOpened(info)

    async def _open_room(self, action: OpenRoom) -> Event:
        try:
            room = await self.rooms.open(action.name, self, action.params)
        except ProtocolError as err:
            return StepFailed(err)
        return RoomOpened(room)

    async def _join_room(self, action: JoinRoom) -> Event:
        try:
            room = await self.rooms.join_async(action.name, self)
        except ProtocolError as err:
            return StepFailed(err)
        return RoomJoined(room)

    async def _attach_listener(self, action: AttachListener) -> Event:
        try:
            fut = self.worker.attach_listener(action.publisher, self.sid, action.sample_rate, action.format)
            await asyncio.wrap_future(fut)
        except WorkerFull as exc:
            return StepFailed(ProtocolError("server_full", str(exc)))
        except Exception as exc:  # the engine process is gone
            return StepFailed(ProtocolError("internal", f"could not attach to the room's decoder: {exc}"))
        return ListenerAttached()


def error_close(err: ProtocolError) -> tuple[bytes, int, str]:
    """Frame, close code and reason for an error raised before a Session exists (e.g. server_full)."""
    return pack(error_message(err)), err.close_code, err.code
