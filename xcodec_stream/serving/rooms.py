"""Rooms: one publisher's codes fanned out to any number of listeners (codes, and audio decoded once per room)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .protocol import ProtocolError


class RoomMember(Protocol):
    sid: int
    want_codes: bool
    want_audio: bool

    def room_data(self, msg: dict, duration_ms: float) -> None: ...

    def room_ended(self, reason: str) -> None: ...

    def fail(self, err: ProtocolError) -> None: ...


@dataclass
class Room:
    name: str
    publisher: Any  # the publishing Session
    params: dict  # the `room` message fields: what a listener needs to read the codes
    listeners: dict[int, RoomMember] = field(default_factory=dict)
    next_frame: int = 0  # first frame a listener joining now will get
    sink: Callable[[int, Any], None] | None = None  # also gets every (frame, codes): the cluster's bridge

    def room_message(self) -> dict:
        return {"type": "room", "room": self.name, "frame": self.next_frame, **self.params}

    def broadcast_codes(self, frame: int, codes: Any, frame_ms: float) -> None:
        self.next_frame = frame + codes.shape[-1]
        if self.sink is not None:
            self.sink(frame, codes)
        msg = {"type": "codes", "frame": frame, "codes": codes}
        for member in list(self.listeners.values()):
            if member.want_codes:
                member.room_data(dict(msg), frame_ms * codes.shape[-1])

    def send_audio(self, per_listener: dict[int, tuple[int, Any]], rate_of: dict[int, int]) -> None:
        for sid, (sample, pcm) in per_listener.items():
            member = self.listeners.get(sid)
            if member is not None and member.want_audio:
                member.room_data(
                    {"type": "audio", "sample": sample, "pcm": pcm}, 1000.0 * pcm.size / rate_of[sid]
                )


class RoomRegistry:
    """Rooms by name. A room exists while its publisher is connected; listeners need an existing room.

    This one daemon's rooms, in memory. `serving.cluster.rooms.ClusterRooms` extends the async entry points
    (`claim`, `join_async`) to rooms hosted by other daemons."""

    node: str | None = None  # this daemon's name in a cluster (None: on its own)

    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def create(self, name: str, publisher: Any, params: dict) -> Room:
        if name in self._rooms:
            raise ProtocolError("room_busy", f"room {name!r} already has a publisher")
        room = self._rooms[name] = Room(name, publisher, params)
        return room

    async def claim(self, name: str, publisher: Any) -> None:
        """Before a publisher's stream is opened: room_busy if the name is taken."""
        if name in self._rooms:
            raise ProtocolError("room_busy", f"room {name!r} already has a publisher")

    def unclaim(self, name: str, publisher: Any) -> None:
        """A claimed room whose publisher never got its stream (nothing to do in memory)."""

    async def open(self, name: str, publisher: Any, params: dict) -> Room:
        """The claimed room, once its publisher's stream is open: listeners can join from now on."""
        return self.create(name, publisher, params)

    async def join_async(self, name: str, member: RoomMember) -> Room:
        return self.join(name, member)

    async def shutdown(self) -> None:
        """The server stops (rooms in memory end with their publishers)."""

    def join(self, name: str, member: RoomMember) -> Room:
        room = self._rooms.get(name)
        if room is None:
            raise ProtocolError("room_not_found", f"no publisher in room {name!r}")
        room.listeners[member.sid] = member
        return room

    def leave(self, name: str, member: RoomMember) -> None:
        room = self._rooms.get(name)
        if room is not None:
            room.listeners.pop(member.sid, None)

    def end(self, name: str, reason: str) -> None:
        """The publisher finished or left: every listener gets its end, the name becomes free."""
        room = self._rooms.pop(name, None)
        if room is not None:
            for member in list(room.listeners.values()):
                member.room_ended(reason)
            room.listeners.clear()

    def summary(self) -> dict[str, int]:
        return {name: len(room.listeners) for name, room in self._rooms.items()}
