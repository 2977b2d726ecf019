"""Plain HTTP on the WebSocket port: a small GET router plugged into websockets' `process_request` hook."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .static_files import static_reply


@dataclass
class HttpReply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: object, status: int = 200) -> HttpReply:
        return cls(status, (json.dumps(obj, sort_keys=True) + "\n").encode(), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> HttpReply:
        return cls(status, text.encode(), content_type)


Handler = Callable[[Request], HttpReply | Awaitable[HttpReply]]


class HttpRouter:
    """GET routes by exact path or prefix. WebSocket upgrades pass through (to any path); other requests are routed or 404."""

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []

    def add(self, path: str, handler: Handler) -> None:
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/', got {path!r}")
        self._routes[path] = handler

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        """Every path starting with `prefix` (exact routes win; longer prefixes first)."""
        if not prefix.startswith("/"):
            raise ValueError(f"route prefix must start with '/', got {prefix!r}")
        self._prefixes.append((prefix, handler))
        self._prefixes.sort(key=lambda p: -len(p[0]))

    @property
    def paths(self) -> list[str]:
        return sorted([*self._routes, *(p + "*" for p, _ in self._prefixes)])

    def match(self, path: str) -> Handler | None:
        handler = self._routes.get(path)
        if handler is None:
            handler = next((h for p, h in self._prefixes if path.startswith(p)), None)
        return handler

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return None  # the WebSocket handshake goes on
        path = urlsplit(request.path).path
        handler = self._routes.get(path)
        static = static_reply(request.path) if handler is None else None  # the web page and /static/ files
        if static is not None:
            reply = HttpReply(static.status, static.body, static.content_type, static.headers)
        elif handler is None:
            reply = HttpReply.json(
                {"error": "not_found", "path": path[:200], "paths": self.paths}, status=404
            )
        else:
            out = handler(request)
            reply = await out if inspect.isawaitable(out) else out
        return respond(connection, reply)


def respond(connection: ServerConnection, reply: HttpReply) -> Response:
    """The HTTP response for `reply` (uncached), in place of the WebSocket handshake."""
    response = connection.respond(reply.status, "")
    headers = response.headers
    del headers["Content-Type"]
    del headers["Content-Length"]
    headers["Content-Type"] = reply.content_type
    headers["Content-Length"] = str(len(reply.body))
    headers["Cache-Control"] = "no-store"
    for k, v in reply.headers.items():
        headers[k] = v
    return dataclasses.replace(response, body=reply.body)
