"""The cluster's shared store (Redis): this daemon's record (its load, for admission), room claims with TTLs,
and the cluster view that /healthz shows. Every record expires unless its daemon refreshes it, so a daemon
that dies (kill -9) vanishes from the cluster within `ttl_s`; one that loses Redis re-registers when it
comes back, from the heartbeat, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("xcodec_stream.cluster")

# Errors that mean "Redis cannot be reached now" (the client raises its own and, on sockets, OSError).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# A room record is one JSON string: refreshed or re-created only while it is still this daemon's (the same
# string), so a daemon never extends or deletes a room another daemon has claimed since.
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ClusterUnavailable(RuntimeError):
    """Redis could not be reached for an operation that needs it."""


def redacted(url: str) -> str:
    """The Redis URL without its password (for logs and /healthz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class RoomRecord:
    """Who hosts a room: the daemon (node), the publisher's session there, and what listeners need."""

    name: str
    node: str
    epoch: str  # one per room instance: a new publisher of the same name gets a new stream of frames
    publisher: int
    params: dict | None  # None while the publisher's stream is being opened

    def dumps(self) -> str:
        return json.dumps(
            {"node": self.node, "epoch": self.epoch, "publisher": self.publisher, "params": self.params},
            sort_keys=True,
        )

    @classmethod
    def loads(cls, name: str, raw: bytes | str) -> RoomRecord:
        d = json.loads(raw)
        return cls(name, d["node"], d["epoch"], int(d["publisher"]), d.get("params"))


class Directory:
    """This daemon's view of, and entries in, the shared store. `load()` gives this daemon's figures for its
    record (sessions, free slots, rooms); `start()` registers and starts the heartbeat, `stop()` leaves."""

    def __init__(
        self,
        url: str,
        *,
        node: str,
        public_url: str,
        load: Callable[[], dict[str, Any]],
        prefix: str = "xcs:",
        ttl_s: float = 3.0,
    ) -> None:
        self.url = url
        self.node = node
        self.public_url = public_url
        self.load = load
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.ttl_ms = int(ttl_s * 1000)
        self.status = "ok"  # draining once the daemon stops
        # Fail fast when Redis is down (no retries, short timeouts): callers answer cluster_unavailable
        # rather than keep a client waiting. Blocking reads (XREAD) stay well under socket_timeout.
        self.redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=max(2.0, ttl_s), retry=Retry(NoBackoff(), 0)
        )
        self._refresh = self.redis.register_script(_REFRESH)
        self._swap = self.redis.register_script(_SWAP)
        self._release = self.redis.register_script(_RELEASE)
        self.hosted: dict[str, RoomRecord] = {}  # rooms whose publisher is here
        self.connected = False
        self.registered_once = False
        self.last_error = ""
        self._down_logged = False
        self.nodes: dict[str, dict[str, Any]] = {}  # the cluster as of the last heartbeat
        self.view_time = 0.0
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._stopped = False

    # ------------------------------------------------------------------ keys
    def node_key(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def room_key(self, name: str) -> str:
        return f"{self.prefix}room:{name}"

    def frames_key(self, name: str, epoch: str) -> str:
        return f"{self.prefix}frames:{name}:{epoch}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.beat()  # a Redis that is down now does not stop the daemon: the heartbeat retries
        self._task = asyncio.create_task(self._heartbeat(), name="cluster-heartbeat")

    async def stop(self) -> None:
        """Leave the cluster: the record goes now (not after its TTL)."""
        if self._task is not None:
            # a flag, not only cancel(): a cancel that lands as the beat's wait times out can be lost
            self._stopped = True
            self._wake.set()
            await asyncio.wait({self._task}, timeout=max(2.0, self.ttl_s))
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(*STORE_ERRORS):
            await self.redis.delete(self.node_key(self.node))
        with contextlib.suppress(*STORE_ERRORS):
            await self.redis.aclose()

    def poke(self) -> None:
        """Send the record now (a status change, e.g. draining), not at the next beat."""
        self._wake.set()

    async def _heartbeat(self) -> None:
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.ttl_s / 3)
            self._wake.clear()
            if not self._stopped:
                await self.beat()

    async def beat(self) -> None:
        """Refresh this daemon's record and its rooms' claims; read the other daemons' records."""
        load = self.load()
        record = {
            "url": self.public_url,
            "status": self.status,
            "updated": time.time(),
            **{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in load.items()},
        }
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.node_key(self.node), mapping=record)
            pipe.pexpire(self.node_key(self.node), self.ttl_ms)
            await pipe.execute()
            for name, rec in list(self.hosted.items()):
                ok = await self._refresh(keys=[self.room_key(name)], args=[rec.dumps(), self.ttl_ms])
                if not ok and self.hosted.get(name) is rec:
                    log.error("cluster: room %r was claimed by another daemon meanwhile", name)
            await self._read_nodes()
        except STORE_ERRORS as exc:
            self._down(exc)
            return
        self._down_logged = False
        if not self.connected:
            self.connected = True
            again = self.registered_once
            self.registered_once = True
            log.info(
                "cluster: %s as %r at %s (%d daemon(s) seen, %d room(s) hosted here)",
                "re-registered" if again else "registered",
                self.node,
                redacted(self.url),
                len(self.nodes),
                len(self.hosted),
            )

    def _down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._down_logged:  # once per outage
            self._down_logged = True
            log.error(
                "cluster: Redis at %s unreachable (%s): local sessions go on, rooms on other daemons cannot "
                "be reached; retrying every %.1f s",
                redacted(self.url),
                self.last_error,
                self.ttl_s / 3,
            )
        self.connected = False

    async def _read_nodes(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}node:*", count=200)]
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        records = await pipe.execute() if keys else []
        now = time.time()
        nodes: dict[str, dict[str, Any]] = {}
        for key, rec in zip(keys, records, strict=True):
            if not rec:
                continue
            d = {k.decode(): v.decode() for k, v in rec.items()}
            node = (key.decode() if isinstance(key, bytes) else key)[len(self.prefix) + len("node:") :]
            nodes[node] = {
                "url": d.get("url", ""),
                "status": d.get("status", "?"),
                "sessions": int(d.get("sessions", 0)),
                "max_sessions": int(d.get("max_sessions", 0)),
                "free": int(d.get("free", 0)),
                "rooms": json.loads(d.get("rooms", "{}")),
                "age_s": round(max(0.0, now - float(d.get("updated", now))), 3),
            }
        self.nodes = nodes
        self.view_time = time.monotonic()

    # ------------------------------------------------------------------ rooms
    async def claim(self, name: str, publisher: int) -> RoomRecord | None:
        """Take the room name for a publisher here; None if another daemon (or session) has it."""
        rec = RoomRecord(name, self.node, secrets.token_hex(8), publisher, None)
        try:
            ok = await self.redis.set(self.room_key(name), rec.dumps(), nx=True, px=self.ttl_ms)
        except STORE_ERRORS as exc:
            raise ClusterUnavailable(str(exc)) from exc
        if not ok:
            return None
        self.hosted[name] = rec
        return rec

    async def opened(self, rec: RoomRecord, params: dict) -> None:
        """The publisher's stream is open: listeners anywhere can now join (the record gets the params)."""
        new = RoomRecord(rec.name, rec.node, rec.epoch, rec.publisher, params)
        if self.hosted.get(rec.name) is rec:
            self.hosted[rec.name] = new
        with contextlib.suppress(*STORE_ERRORS):  # (the heartbeat re-creates it from `hosted`)
            await self._swap(keys=[self.room_key(rec.name)], args=[rec.dumps(), new.dumps(), self.ttl_ms])

    async def release(self, name: str) -> None:
        rec = self.hosted.pop(name, None)
        if rec is not None:
            with contextlib.suppress(*STORE_ERRORS):
                await self._release(keys=[self.room_key(name)], args=[rec.dumps()])

    async def lookup(self, name: str) -> RoomRecord | None:
        try:
            raw = await self.redis.get(self.room_key(name))
        except STORE_ERRORS as exc:
            raise ClusterUnavailable(str(exc)) from exc
        return None if raw is None else RoomRecord.loads(name, raw)

    # ------------------------------------------------------------------ admission, /healthz
    def hint(self) -> dict[str, Any] | None:
        """Another daemon with free slots (the most), as of the last heartbeat; None if none."""
        others = [
            (info["free"], node, info)
            for node, info in self.nodes.items()
            if node != self.node and info["status"] == "ok" and info["free"] > 0
        ]
        if not others:
            return None
        free, node, info = max(others, key=lambda t: (t[0], t[1]))
        return {"node": node, "url": info["url"], "free": free}

    def view(self) -> dict[str, Any]:
        rooms: dict[str, dict[str, Any]] = {}
        for node, info in sorted(self.nodes.items()):
            for name, r in info["rooms"].items():
                room = rooms.setdefault(name, {"host": None, "listeners": {}})
                if r.get("host"):
                    room["host"] = node
                if r.get("listeners"):
                    room["listeners"][node] = r["listeners"]
        return {
            "node": self.node,
            "url": self.public_url,
            "redis": redacted(self.url),
            "connected": self.connected,
            "error": None if self.connected else self.last_error,
            "status": self.status,
            "ttl_s": self.ttl_s,
            "view_age_s": round(time.monotonic() - self.view_time, 3) if self.view_time else None,
            "nodes": self.nodes,
            "rooms": rooms,
            "free": sum(n["free"] for n in self.nodes.values() if n["status"] == "ok"),
        }
