"""Handshake authentication: bearer tokens (header or `?token=`) compared in constant time; the 401 reply."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import MultipleValuesError
from websockets.http11 import Request, Response

from .http import HttpReply, respond


class TokenAuth:
    """Accepts a request carrying one of `tokens`: `Authorization: Bearer <token>` or a `token` query
    parameter (browsers cannot set headers on a WebSocket). No tokens: everything is accepted."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._tokens = [t.encode() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    @staticmethod
    def presented(request: Request) -> str | None:
        try:
            header = request.headers.get("Authorization")
        except MultipleValuesError:
            return None
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            return value.strip() if scheme.lower() == "bearer" else None
        values = parse_qs(urlsplit(request.path).query).get("token")
        return values[0] if values and len(values) == 1 else None

    def check(self, request: Request) -> bool:
        if not self._tokens:
            return True
        given = self.presented(request)
        if given is None:
            return False
        given_b = given.encode()
        ok = False
        for token in self._tokens:  # every token compared, whatever matches: the time does not tell which
            ok |= hmac.compare_digest(token, given_b)
        return ok


def unauthorized(connection: ServerConnection) -> Response:
    """HTTP 401 with a JSON body, in place of the WebSocket upgrade (or the page asked for)."""
    reply = HttpReply.json({"error": "unauthorized", "message": "missing or wrong token"}, status=401)
    reply.headers["WWW-Authenticate"] = 'Bearer realm="xcodec-stream"'
    return respond(connection, reply)
