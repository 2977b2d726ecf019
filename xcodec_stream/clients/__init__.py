"""Clients: asyncio client library, file and microphone loopback."""

from .client import DEFAULT_URL, Client, ServerError, StreamResult, listen, stream

__all__ = ["DEFAULT_URL", "Client", "ServerError", "StreamResult", "listen", "stream"]
