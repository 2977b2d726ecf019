"""Session resume: output kept until the client acknowledges it, and sessions waiting for their client to return."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .protocol import ProtocolError

KINDS = ("audio", "codes")  # data message types; positions: audio `sample`, codes `frame`


def span(msg: dict) -> tuple[str, int, int]:
    """(kind, start, end) of a data message, in its own units (client-rate samples or code frames)."""
    if msg["type"] == "audio":
        return "audio", msg["sample"], msg["sample"] + msg["pcm"].shape[-1]
    return "codes", msg["frame"], msg["frame"] + msg["codes"].shape[-1]


def tail(msg: dict, skip: int) -> dict:
    """The data message without its first `skip` units."""
    out = dict(msg)
    if msg["type"] == "audio":
        out["pcm"], out["sample"] = msg["pcm"][skip:], msg["sample"] + skip
    else:
        out["codes"], out["frame"] = msg["codes"][:, skip:], msg["frame"] + skip
    return out


@dataclass
class _Sent:
    kind: str
    start: int
    end: int
    ms: float
    msg: dict


class ReplayBuffer:
    """Data messages handed to the socket but not yet acknowledged by the client (`ack`), at most `max_ms`
    of them (beyond it the oldest are let go: `floor` says from where a resume can still be served)."""

    def __init__(self, max_ms: float) -> None:
        self.max_ms = max_ms
        self._sent: deque[_Sent] = deque()
        self.ms = 0.0
        self.acked = dict.fromkeys(KINDS, 0)  # the client has everything before these positions
        self.floor = dict.fromkeys(KINDS, 0)  # unacknowledged output before these was let go
        self.sent_end = dict.fromkeys(KINDS, 0)  # end of the output handed to a socket so far

    def __len__(self) -> int:
        return len(self._sent)

    def record(self, msg: dict, ms: float) -> None:
        kind, start, end = span(msg)
        self.sent_end[kind] = max(self.sent_end[kind], end)
        if end <= self.acked[kind]:
            return
        self._sent.append(_Sent(kind, start, end, ms, msg))
        self.ms += ms
        while self.ms > self.max_ms and len(self._sent) > 1:
            old = self._sent.popleft()
            self.ms -= old.ms
            self.floor[old.kind] = max(self.floor[old.kind], old.end)

    def ack(self, sample: int | None, frame: int | None) -> None:
        for kind, pos in zip(KINDS, (sample, frame), strict=True):
            if pos is not None:
                self.acked[kind] = max(self.acked[kind], min(pos, self.sent_end[kind]))
        kept: deque[_Sent] = deque()
        for s in self._sent:
            if s.end <= self.acked[s.kind]:
                self.ms -= s.ms
            else:
                kept.append(s)
        self._sent = kept

    def check(self, sample: int | None, frame: int | None) -> None:
        """A client claiming more output than was ever sent is not this session's client."""
        for kind, pos in zip(KINDS, (sample, frame), strict=True):
            if pos is not None and pos > self.sent_end[kind]:
                raise ProtocolError(
                    "resume_failed", f"{kind} position {pos} is past what was sent ({self.sent_end[kind]})"
                )

    def take_from(self, sample: int | None, frame: int | None) -> tuple[list[tuple[dict, float]], dict]:
        """Everything kept from the client's positions on (None: its last ack), cut to start there; the
        buffer empties (what is re-sent is recorded again). Also returns where the replay starts per kind:
        later than asked only if that output was let go (more than max_ms unacknowledged)."""
        self.ack(sample, frame)
        start = {kind: max(self.acked[kind], self.floor[kind]) for kind in KINDS}
        out: list[tuple[dict, float]] = []
        for s in self._sent:
            skip = max(0, start[s.kind] - s.start)
            if skip < s.end - s.start:
                out.append(
                    (
                        tail(s.msg, skip) if skip else s.msg,
                        s.ms * (s.end - s.start - skip) / (s.end - s.start),
                    )
                )
        self._sent.clear()
        self.ms = 0.0
        return out, start


class ResumeRegistry:
    """Resumable sessions by token. A session whose connection dropped is `detach`ed: it waits `grace_s`
    for a `claim`, then `on_expire(session)` ends it."""

    def __init__(self, grace_s: float, on_expire: Callable[[Any], None]) -> None:
        self.grace_s = grace_s
        self.on_expire = on_expire
        self._sessions: dict[str, Any] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def detached(self) -> int:
        return len(self._timers)

    def issue(self, session: Any) -> str:
        token = secrets.token_urlsafe(16)  # 128 bits
        self._sessions[token] = session
        return token

    def find(self, token: str) -> Any | None:
        """Compare with every token in constant time (a handful: at most max_sessions)."""
        found = None
        given = token.encode()
        for known, session in self._sessions.items():
            if hmac.compare_digest(known.encode(), given):
                found = session
        return found

    def detach(self, token: str) -> None:
        if token in self._sessions and token not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[token] = loop.call_later(self.grace_s, self._expire, token)

    def claim(self, token: str) -> None:
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()

    def forget(self, token: str | None) -> None:
        if token is not None:
            self.claim(token)
            self._sessions.pop(token, None)

    def _expire(self, token: str) -> None:
        self._timers.pop(token, None)
        session = self._sessions.pop(token, None)
        if session is not None:
            self.on_expire(session)

    def close(self) -> list[Any]:
        """Cancel every timer; the detached sessions (to be ended by the caller)."""
        detached = [self._sessions[t] for t in self._timers if t in self._sessions]
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        return detached
