"""What a SessionMachine is told (events) and what it asks its adapter to do (actions): plain data, no I/O.

Actions marked "answers" are steps the adapter completes later (a worker slot, a room in a cluster): it feeds
the event named there back to the machine, or `StepFailed` with the ProtocolError the step raised. A step is
always the last action of its list: the machine does nothing more until its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import ProtocolError
from .rooms import Room
from .worker import EngineInfo, StepResult, StreamSpec

# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Received:
    """A frame from the client, as the WebSocket layer gave it (text frames are str)."""

    data: bytes | str


@dataclass(frozen=True, slots=True)
class RoomClaimed:
    """ClaimRoom succeeded: the room name is this publisher's."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    info: EngineInfo


@dataclass(frozen=True, slots=True)
class RoomOpened:
    room: Room


@dataclass(frozen=True, slots=True)
class RoomJoined:
    room: Room


@dataclass(frozen=True, slots=True)
class ListenerAttached:
    """AttachListener succeeded: the room's decoder feeds this listener."""


@dataclass(frozen=True, slots=True)
class StepFailed:
    """A step of the handshake (an action that answers) failed."""

    error: ProtocolError


@dataclass(frozen=True, slots=True)
class Result:
    """The worker's output for this session in one tick."""

    result: StepResult


@dataclass(frozen=True, slots=True)
class RoomData:
    """Listener: a room's codes or audio for this session."""

    msg: dict
    duration_ms: float


@dataclass(frozen=True, slots=True)
class RoomEnded:
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """An error found outside the machine: idle timeout, server fault, shutdown, the cluster's store."""

    error: ProtocolError


@dataclass(frozen=True, slots=True)
class StatsDue:
    """The `stats_interval_ms` timer fired."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The server stops: flush as if the client had sent `flush`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over (its connection ended and no resume is coming): release what it holds."""


Event = (
    Received
    | RoomClaimed
    | StreamOpened
    | RoomOpened
    | RoomJoined
    | ListenerAttached
    | StepFailed
    | Result
    | RoomData
    | RoomEnded
    | Failed
    | StatsDue
    | Shutdown
    | Closed
)

# ---------------------------------------------------------------------------------------------- actions
# Every action concerns the machine's own session (its id is the adapter's to add).


@dataclass(frozen=True, slots=True)
class ClaimRoom:
    """Publish: reserve the room name (room_busy if taken). Answers RoomClaimed."""

    name: str


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Allocate worker slots and open the stream. Answers StreamOpened."""

    spec: StreamSpec


@dataclass(frozen=True, slots=True)
class OpenRoom:
    """Publish: the claimed room goes live with these `room` message fields. Answers RoomOpened."""

    name: str
    params: dict


@dataclass(frozen=True, slots=True)
class JoinRoom:
    """Listen: join the room (room_not_found if it has no publisher). Answers RoomJoined."""

    name: str


@dataclass(frozen=True, slots=True)
class AttachListener:
    """Listen with audio: the publisher's room decoder also feeds this session. Answers ListenerAttached."""

    publisher: int
    sample_rate: int
    format: str


@dataclass(frozen=True, slots=True)
class PushAudio:
    seq: int
    pcm: np.ndarray


@dataclass(frozen=True, slots=True)
class PushCodes:
    frame: int
    codes: np.ndarray


@dataclass(frozen=True, slots=True)
class FlushStream:
    pass


@dataclass(frozen=True, slots=True)
class CloseStream:
    """Free the worker slots."""


@dataclass(frozen=True, slots=True)
class DetachListener:
    publisher: int


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    name: str


@dataclass(frozen=True, slots=True)
class UnclaimRoom:
    """Publish: a claimed name whose room never opened."""

    name: str


@dataclass(frozen=True, slots=True)
class EndRoom:
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class BroadcastCodes:
    """Publish: the room's listeners (and the cluster's bridge) get these codes."""

    room: Room
    frame: int
    codes: np.ndarray
    frame_ms: float


@dataclass(frozen=True, slots=True)
class SendRoomAudio:
    """Publish: the room decoder's audio, per listener sid: (sample, pcm)."""

    room: Room
    listeners: dict[int, tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class StartStats:
    """Feed StatsDue every `interval_ms` while the session is open and not closing."""

    interval_ms: int


@dataclass(frozen=True, slots=True)
class StopStats:
    pass


@dataclass(frozen=True, slots=True)
class Close:
    """Send what is queued, then close the connection with this code and reason."""

    code: int
    reason: str


Action = (
    ClaimRoom
    | OpenStream
    | OpenRoom
    | JoinRoom
    | AttachListener
    | PushAudio
    | PushCodes
    | FlushStream
    | CloseStream
    | DetachListener
    | LeaveRoom
    | UnclaimRoom
    | EndRoom
    | BroadcastCodes
    | SendRoomAudio
    | StartStats
    | StopStats
    | Close
)
