"""A room's code frames across daemons: the host daemon appends them to a Redis stream, daemons with
listeners of the room read it. Codes only (0.5-4 kbit/s a room), never audio: each daemon decodes a room
once for its own listeners. A stream (not pub/sub) gives every entry an id, so a daemon that starts
following a room begins at a known frame: the live edge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis

from .directory import STORE_ERRORS, Directory

log = logging.getLogger("xcodec_stream.cluster")

STREAM_EXPIRE_S = 60  # a stream outlives its room this long (late readers see the end marker)
OUT_QUEUE = 500  # frame messages waiting for Redis, per room (about 40 s); older ones are dropped beyond it


def codes_fields(frame: int, codes: np.ndarray) -> dict[str, bytes | int]:
    """One stream entry: the first frame index, n_q, and the (n_q, F) codes as little-endian uint16."""
    c = np.ascontiguousarray(codes, dtype="<u2")
    return {"f": frame, "q": c.shape[0], "c": c.tobytes()}


def end_fields(reason: str, frame: int) -> dict[str, bytes | int | str]:
    return {"end": reason, "f": frame}


@dataclass
class Entry:
    """A decoded stream entry: codes from `frame` on, or the room's end (`end` = its reason)."""

    id: bytes
    frame: int
    codes: np.ndarray | None = None
    end: str | None = None


def parse_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    frame = int(fields[b"f"])
    if b"end" in fields:
        return Entry(entry_id, frame, end=fields[b"end"].decode())
    n_q = int(fields[b"q"])
    codes = np.frombuffer(fields[b"c"], dtype="<u2").reshape(n_q, -1)
    return Entry(entry_id, frame, codes=codes)


class FrameOut:
    """A hosted room's frames to its stream, in order. `put` never waits (it is called from the session's
    output path); a task sends what has queued, a pipeline per batch. While Redis is down frames are dropped
    (counted, logged once): listeners elsewhere have already been told (cluster_unavailable)."""

    def __init__(self, directory: Directory, name: str, epoch: str, maxlen: int) -> None:
        self.directory = directory
        self.name = name
        self.key = directory.frames_key(name, epoch)
        self.maxlen = maxlen
        self.queue: asyncio.Queue[dict] = asyncio.Queue(OUT_QUEUE)
        self.sent = 0  # entries and bytes appended (for the bench: Redis traffic per room)
        self.bytes = 0
        self.lost = 0
        self.task = asyncio.create_task(self._run(), name=f"frames-out-{name}")

    def put(self, frame: int, codes: np.ndarray) -> None:
        self._queue(codes_fields(frame, codes))

    def end(self, reason: str, frame: int) -> None:
        self._queue(end_fields(reason, frame))

    def _queue(self, fields: dict) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.lost += 1
        self.queue.put_nowait(fields)

    async def _run(self) -> None:
        redis: aioredis.Redis = self.directory.redis
        down = False
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                pipe = redis.pipeline(transaction=False)
                for fields in batch:
                    pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
                pipe.expire(self.key, STREAM_EXPIRE_S)
                await pipe.execute()
                self.sent += len(batch)
                self.bytes += sum(len(f.get("c", b"")) for f in batch)
                down = False
            except STORE_ERRORS as exc:
                self.lost += len(batch)
                if not down:
                    log.warning("cluster: frames of room %r not published (Redis: %s)", self.name, exc)
                down = True
            if any("end" in f for f in batch):
                await self.directory.release(self.name)  # after the end marker: listeners read it first
                return

    async def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the end marker to go out, then stop."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.task)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def live_edge(redis: aioredis.Redis, key: str) -> tuple[bytes, int, str | None]:
    """Where a new follower of a stream starts: (the last entry id, the next frame, the end reason if the
    stream has already ended). An empty stream starts at frame 0."""
    last = await redis.xrevrange(key, count=1)
    if not last:
        return b"0-0", 0, None
    entry = parse_entry(*last[0])
    if entry.end is not None:
        return entry.id, entry.frame, entry.end
    return entry.id, entry.frame + entry.codes.shape[-1], None


async def read_after(redis: aioredis.Redis, key: str, last_id: bytes, block_ms: int) -> list[Entry]:
    """Entries after `last_id` (waits at most block_ms for the first)."""
    resp = await redis.xread({key: last_id}, block=block_ms, count=200)
    return [parse_entry(i, f) for _, entries in resp or [] for i, f in entries]


__all__ = ["STORE_ERRORS", "Entry", "FrameOut", "live_edge", "read_after"]
