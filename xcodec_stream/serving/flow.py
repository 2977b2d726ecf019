"""Per-session flow control: the bounded output queue (slow-reader policy) and the input message rate limit."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class QueueOverflow(Exception):
    """Control messages piled up: the client does not read."""


@dataclass
class _Item:
    msg: dict
    ms: float  # duration of a data message (0 for control)
    data: bool
    pinned: bool  # never dropped: output owed to a client that is resuming (see resume.py)


class OutputQueue:
    """Messages waiting for the socket, in order. Data (audio/codes) is bounded in milliseconds: beyond
    `max_data_ms` the OLDEST unpinned data message is dropped and counted; control messages are never
    dropped, but more than `max_control` of them waiting means the client stopped reading (QueueOverflow).
    Pinned data (kept for a session resume) is never dropped and does not count against the bound."""

    def __init__(
        self, max_data_ms: float, max_control: int, *, on_drop: Callable[[int], None] | None = None
    ) -> None:
        self.max_data_ms = max_data_ms
        self.max_control = max_control
        self.on_drop = on_drop
        self._items: deque[_Item] = deque()
        self.data_ms = 0.0  # unpinned data waiting (what the bound applies to)
        self.pinned_ms = 0.0
        self.n_control = 0
        self.dropped = 0
        self._event = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._items)

    def _added(self) -> None:
        self._event.set()
        self._empty.clear()

    def put_control(self, msg: dict, *, force: bool = False) -> None:
        if self.n_control >= self.max_control and not force:
            raise QueueOverflow(f"{self.n_control} control messages not read")
        self._items.append(_Item(msg, 0.0, False, False))
        self.n_control += 1
        self._added()

    def put_data(self, msg: dict, ms: float, *, pinned: bool = False) -> None:
        if pinned:
            self.pinned_ms += ms
        else:
            # Drop the oldest data first; the newest message is always kept (it may alone exceed the bound).
            while self.data_ms + ms > self.max_data_ms and self._drop_oldest_data():
                pass
            self.data_ms += ms
        self._items.append(_Item(msg, ms, True, pinned))
        self._added()

    def put_front(self, items: Iterable[tuple[dict, float]]) -> None:
        """Put messages before everything queued, in the given order: (msg, ms) with ms > 0 for pinned data,
        ms == 0 for control (a session resume: `resumed`, then the output the client has not received)."""
        front = []
        for msg, ms in items:
            data = msg["type"] in ("audio", "codes")
            front.append(_Item(msg, ms, data, data))
            if data:
                self.pinned_ms += ms
            else:
                self.n_control += 1
        self._items.extendleft(reversed(front))
        if front:
            self._added()

    def _drop_oldest_data(self) -> bool:
        for i, item in enumerate(self._items):
            if item.data and not item.pinned:
                del self._items[i]
                self.data_ms -= item.ms
                self.dropped += 1
                if self.on_drop is not None:
                    self.on_drop(1)
                return True
        return False

    def pop(self) -> dict | None:
        if not self._items:
            return None
        item = self._items.popleft()
        if item.data:
            if item.pinned:
                self.pinned_ms -= item.ms
            else:
                self.data_ms -= item.ms
            item.msg["dropped"] = self.dropped  # every data message carries the running count
        else:
            self.n_control -= 1
        if not self._items:
            self._event.clear()
            self._empty.set()
        return item.msg

    async def get(self) -> dict:
        while True:
            msg = self.pop()
            if msg is not None:
                return msg
            await self._event.wait()

    async def join(self) -> None:
        """Wait until every queued message has been taken by the writer."""
        await self._empty.wait()


class TokenBucket:
    """Message rate limit: `rate` per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens, self.t = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
