"""TLS for the daemon (wss:// and https://) from a PEM certificate chain and key."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server context with the system's secure defaults, TLS 1.2 at least."""
    for what, path in (("cert", cert), ("key", key)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"[tls] {what} file {path} not found")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx
