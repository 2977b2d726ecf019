"""The web client's files: GET / and GET /static/<path> served from the package's static folder."""

from __future__ import annotations

import http
import posixpath
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}

# Everything the page loads comes from this origin; the WebSocket goes back to it ('self' covers ws/wss).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_static_route(path: str) -> bool:
    """True for the request paths this module answers (the page and its files), query string ignored."""
    p = path.split("?", 1)[0]
    return p in ("/", "/index.html") or p.startswith(STATIC_PREFIX)


def resolve(path: str) -> Path | None:
    """Request path -> file under STATIC_DIR, or None if it is not one (missing, a folder, or outside)."""
    p = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
    if p in ("/", "/index.html"):
        rel = "index.html"
    elif p.startswith(STATIC_PREFIX):
        rel = p[len(STATIC_PREFIX) :]
    else:
        return None
    # Reject rather than normalise anything odd: traversal, absolute parts, backslashes, NULs, dotfiles.
    if not rel or "\\" in rel or "\0" in rel or rel != posixpath.normpath(rel):
        return None
    parts = rel.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    f = (STATIC_DIR / rel).resolve()
    if not f.is_relative_to(STATIC_DIR) or not f.is_file():
        return None
    return f


def content_type(f: Path) -> str:
    for suffix, ctype in CONTENT_TYPES.items():
        if f.name.endswith(suffix):
            return ctype
    return "application/octet-stream"


@dataclass(frozen=True)
class StaticReply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(SECURITY_HEADERS))


def static_reply(path: str) -> StaticReply | None:
    """The page or one of its files; a 404 for a /static/ path that is not a file; None for any other
    path (not ours: the router answers it). WebSocket upgrades never reach this (the router passes them on)."""
    if not is_static_route(path):
        return None
    f = resolve(path)
    if f is None:
        return StaticReply(http.HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
    return StaticReply(http.HTTPStatus.OK, content_type(f), f.read_bytes())
