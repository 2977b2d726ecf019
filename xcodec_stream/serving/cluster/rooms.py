"""Rooms that span daemons. A room is hosted by the daemon its publisher reached: that daemon claims the name
in Redis (so room_busy holds cluster-wide) and appends the room's code frames to a stream. A listener that
reaches another daemon joins a *mirror* there: one reader of the stream and one relay decoder in the worker
for all of that daemon's listeners of the room (codes cross daemons, audio never does; a room is decoded at
most once per daemon). The relay decoder starts like the host's room decoder, so its audio is the same."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..modes import Mode
from ..protocol import ProtocolError
from ..rooms import Room, RoomMember, RoomRegistry
from ..worker import StepResult, StreamSpec, WorkerFull
from .bridge import STORE_ERRORS, FrameOut, live_edge, read_after
from .directory import ClusterUnavailable, Directory, RoomRecord

log = logging.getLogger("xcodec_stream.cluster")


class _Relay:
    """Stands in for a mirror's publisher: the worker stream that decodes the room on this daemon."""

    def __init__(self, sid: int) -> None:
        self.sid = sid


@dataclass
class _Mirror:
    record: RoomRecord
    room: Room
    relay: int  # worker stream id
    key: str  # the room's frame stream
    last_id: bytes
    task: asyncio.Task | None = None
    ended: bool = False
    frames_in: int = 0


class ClusterRooms(RoomRegistry):
    """The RoomRegistry of a daemon in a cluster (see the module docstring). `worker()` gives the server's
    worker, `new_id()` a stream id that no session uses; relay results reach `sinks[relay id]`."""

    def __init__(
        self,
        directory: Directory,
        *,
        worker: Callable[[], Any],
        new_id: Callable[[], int],
        sinks: dict[int, Callable[[StepResult], None]],
        stream_len: int,
    ) -> None:
        super().__init__()
        self.directory = directory
        self.node = directory.node
        self._worker = worker
        self._new_id = new_id
        self._sinks = sinks
        self.stream_len = stream_len
        self.mirrors: dict[str, _Mirror] = {}
        self.outs: dict[str, FrameOut] = {}
        self._claims: dict[str, RoomRecord] = {}
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ publishers (rooms hosted here)
    async def claim(self, name: str, publisher: Any) -> None:
        await super().claim(name, publisher)
        if name in self.mirrors:
            node = self.mirrors[name].record.node
            raise ProtocolError("room_busy", f"room {name!r} already has a publisher (on daemon {node})")
        try:
            rec = await self.directory.claim(name, publisher.sid)
        except ClusterUnavailable as exc:
            raise ProtocolError(
                "cluster_unavailable",
                f"room {name!r} cannot be claimed cluster-wide: Redis unreachable ({exc}); retry later",
            ) from None
        if rec is None:
            with contextlib.suppress(ClusterUnavailable):
                other = await self.directory.lookup(name)
            where = f" (on daemon {other.node})" if other is not None else ""
            raise ProtocolError("room_busy", f"room {name!r} already has a publisher{where}")
        self._claims[name] = rec

    def unclaim(self, name: str, publisher: Any) -> None:
        if self._claims.pop(name, None) is not None:
            self._spawn(self.directory.release(name))

    async def open(self, name: str, publisher: Any, params: dict) -> Room:
        room = super().create(name, publisher, params)
        rec = self._claims.pop(name, None)
        if rec is not None:
            out = self.outs[name] = FrameOut(self.directory, name, rec.epoch, self.stream_len)
            room.sink = out.put
            await self.directory.opened(rec, params)  # before `ready`: listeners elsewhere can join now
        return room

    def end(self, name: str, reason: str) -> None:
        room = self._rooms.get(name)
        super().end(name, reason)
        out = self.outs.pop(name, None)
        if out is not None:  # listeners elsewhere get the same end, after the last frames
            out.end(reason, room.next_frame if room is not None else 0)
            self._spawn(out.close(timeout=5.0))

    # ------------------------------------------------------------------ listeners
    async def join_async(self, name: str, member: RoomMember) -> Room:
        if name in self._rooms:
            return self.join(name, member)
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one mirror per room, however many listeners arrive at once
            if name in self._rooms:
                return self.join(name, member)
            mirror = self.mirrors.get(name)
            if mirror is None:
                mirror = await self._follow(name)
            mirror.room.listeners[member.sid] = member
            return mirror.room

    def leave(self, name: str, member: RoomMember) -> None:
        mirror = self.mirrors.get(name)
        if name in self._rooms or mirror is None:
            super().leave(name, member)
            return
        mirror.room.listeners.pop(member.sid, None)
        if not mirror.room.listeners:  # nobody here listens any more: stop following
            self._end_mirror(mirror, "no_listeners")

    async def _follow(self, name: str) -> _Mirror:
        unavailable = f"room {name!r} has no publisher on this daemon and Redis is unreachable"
        try:
            rec = await self.directory.lookup(name)
        except ClusterUnavailable as exc:
            raise ProtocolError("cluster_unavailable", f"{unavailable} ({exc}); retry later") from None
        if rec is None or rec.params is None or rec.node == self.node:
            raise ProtocolError("room_not_found", f"no publisher in room {name!r} (cluster-wide)")
        key = self.directory.frames_key(name, rec.epoch)
        try:
            last_id, next_frame, ended = await live_edge(self.directory.redis, key)
        except STORE_ERRORS as exc:
            raise ProtocolError("cluster_unavailable", f"{unavailable} ({exc}); retry later") from None
        if ended is not None:
            raise ProtocolError("room_not_found", f"room {name!r} has just ended ({ended})")
        relay = self._new_id()
        worker = self._worker()
        try:
            fut = worker.open(relay, StreamSpec(Mode.RELAY, 16000, "f32", rec.params["latency"]))
        except WorkerFull as exc:
            raise ProtocolError("server_full", str(exc)) from None
        try:
            await asyncio.wrap_future(fut)
        except WorkerFull as exc:  # an engine process answers "full" through the future
            raise ProtocolError("server_full", str(exc)) from None
        except Exception as exc:
            raise ProtocolError("internal", f"could not open the room's decoder: {exc}") from None
        room = Room(name, _Relay(relay), rec.params, next_frame=next_frame)
        mirror = _Mirror(rec, room, relay, key, last_id)
        self._sinks[relay] = lambda r: self._relay_result(mirror, r)
        self.mirrors[name] = mirror
        mirror.task = asyncio.create_task(self._read(mirror), name=f"frames-in-{name}")
        log.info("cluster: following room %r hosted on %s from frame %d", name, rec.node, next_frame)
        return mirror

    async def _read(self, mirror: _Mirror) -> None:
        """Fan the stream's frames out here until its end marker, or until the host's claim is gone (the
        host daemon died: publisher_left within ttl_s), or until Redis fails (cluster_unavailable)."""
        redis = self.directory.redis
        period = self.directory.ttl_s / 3
        check_at = time.monotonic() + period
        name = mirror.room.name
        try:
            while not mirror.ended:
                for entry in await read_after(redis, mirror.key, mirror.last_id, int(period * 1000)):
                    if self._entry(mirror, entry):
                        return
                if time.monotonic() >= check_at:
                    check_at = time.monotonic() + period
                    rec = await self.directory.lookup(name)
                    if rec is None or rec.epoch != mirror.record.epoch:
                        # an end marker written just before the claim went is still to be read
                        for entry in await read_after(redis, mirror.key, mirror.last_id, None):
                            if self._entry(mirror, entry):
                                return
                        log.warning("cluster: room %r: host %s is gone", name, mirror.record.node)
                        self._end_mirror(mirror, "publisher_left")
                        return
        except (ClusterUnavailable, *STORE_ERRORS) as exc:
            err = ProtocolError(
                "cluster_unavailable",
                f"room {name!r} is hosted on daemon {mirror.record.node} and Redis is unreachable "
                f"({exc}); join again later",
            )
            log.error("cluster: room %r: lost its frames (%s)", name, exc)
            self._end_mirror(mirror, None, err)

    def _entry(self, mirror: _Mirror, entry: Any) -> bool:
        """Handle one stream entry; True once the room has ended."""
        mirror.last_id = entry.id
        if entry.end is not None:
            if entry.end == "publisher_done":  # the relay decodes what is left, then its `done` ends it
                self._worker().flush(mirror.relay)
            else:
                self._end_mirror(mirror, entry.end)
            return True
        room = mirror.room
        if entry.frame != room.next_frame:
            log.warning("cluster: room %r: frames %d..%d missing", room.name, room.next_frame, entry.frame)
        mirror.frames_in += entry.codes.shape[-1]
        room.broadcast_codes(entry.frame, entry.codes, 1000.0 / room.params["frame_rate"])
        self._worker().push_codes(mirror.relay, entry.frame, entry.codes)
        return False

    def _relay_result(self, mirror: _Mirror, r: StepResult) -> None:
        if mirror.ended:
            return
        room = mirror.room
        if r.error is not None:
            self._end_mirror(mirror, None, ProtocolError("internal", "the room's decoder failed here"))
            return
        if r.listeners:
            rates = {sid: m.rate for sid, m in room.listeners.items()}
            room.send_audio({k: v for k, v in r.listeners.items() if k in rates}, rates)
        if r.done is not None:
            self._end_mirror(mirror, "publisher_done")

    def _end_mirror(self, mirror: _Mirror, reason: str | None, err: ProtocolError | None = None) -> None:
        """Every listener here gets `done` with `reason` (or the fatal `err`); the relay is closed."""
        if mirror.ended:
            return
        mirror.ended = True
        name = mirror.room.name
        if self.mirrors.get(name) is mirror:
            del self.mirrors[name]
        for member in list(mirror.room.listeners.values()):
            if err is not None:
                member.fail(err)
            else:
                member.room_ended(reason)
        mirror.room.listeners.clear()
        self._sinks.pop(mirror.relay, None)
        worker = self._worker()
        if worker is not None:
            worker.close(mirror.relay)
        task = mirror.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ------------------------------------------------------------------ the daemon
    def summary(self) -> dict[str, int]:
        return {**super().summary(), **{n: len(m.room.listeners) for n, m in self.mirrors.items()}}

    def cluster_rooms(self) -> dict[str, dict[str, Any]]:
        """For this daemon's record: rooms hosted or followed here, with their listeners here."""
        out = {name: {"host": True, "listeners": len(r.listeners)} for name, r in self._rooms.items()}
        for name, m in self.mirrors.items():
            out[name] = {"host": False, "listeners": len(m.room.listeners)}
        return out

    async def shutdown(self) -> None:
        """The daemon drains: not admitting any more (status draining); listeners of rooms hosted elsewhere
        get `done` (shutting_down) at once: nothing here has to be flushed for them."""
        self.directory.status = "draining"
        self.directory.poke()
        for mirror in list(self.mirrors.values()):
            self._end_mirror(mirror, "shutting_down")

    async def close(self) -> None:
        """After the sessions: let the hosted rooms' end markers out, then leave the cluster."""
        await asyncio.gather(*(out.close() for out in self.outs.values()))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        await self.directory.stop()
