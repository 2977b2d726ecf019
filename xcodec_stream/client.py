"""The Python client library of the daemon (`xcodec_stream.clients`), under the name the docs use."""

from .clients import DEFAULT_URL, Client, ServerError, StreamResult, listen, stream

__all__ = ["DEFAULT_URL", "Client", "ServerError", "StreamResult", "listen", "stream"]
