"""The web client's HTTP routes: content types, the files the page needs, and no way out of the static folder."""

from __future__ import annotations

import re

import pytest
from e2e_stack import MODEL

from xcodec_stream.serving.static_files import STATIC_DIR, resolve, static_reply


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/worklet.js", "text/javascript; charset=utf-8"),
        ("/static/player-worklet.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/vendor/msgpack.min.js", "text/javascript; charset=utf-8"),
        ("/static/vendor/msgpack.LICENSE", "text/plain; charset=utf-8"),
        ("/static/app.js?v=2", "text/javascript; charset=utf-8"),
    ],
)
def test_serves_page_files_with_their_content_type(path: str, ctype: str) -> None:
    r = static_reply(path)
    assert r is not None and r.status == 200
    assert r.content_type == ctype
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert len(r.body) > 0


def test_every_file_the_page_references_exists() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    js = (STATIC_DIR / "app.js").read_text()
    refs = re.findall(r'(?:src|href)="(/static/[^"]+)"', html) + re.findall(
        r'addModule\("(/static/[^"]+)"\)', js
    )
    assert len(refs) >= 5
    for ref in refs:
        assert resolve(ref) is not None, ref


@pytest.mark.parametrize(
    "path",
    [
        "/static/../static_files.py",
        "/static/%2e%2e/static_files.py",
        "/static/vendor/../../protocol.py",
        "/static/..%2fprotocol.py",
        "/static//etc/passwd",
        "/static/%2fetc/passwd",
        "/static/..\\protocol.py",
        "/static/app.js%00.css",
        "/static/.hidden",
        "/static/",
        "/static/vendor",
        "/static/nope.js",
    ],
)
def test_rejects_traversal_and_missing_files(path: str) -> None:
    assert resolve(path) is None
    r = static_reply(path)
    assert r is not None and r.status == 404


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/ws", "/staticx/app.js"])
def test_leaves_other_paths_to_the_router(path: str) -> None:
    assert static_reply(path) is None


def test_daemon_serves_the_page_over_http(daemon) -> None:
    """The same routes through the real daemon's HTTP hook, with raw paths a browser would never send."""
    import http.client
    import json

    def get(path: str) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, r.getheader("Content-Type", ""), body

    status, ctype, body = get("/")
    assert status == 200 and ctype.startswith("text/html") and b"/static/app.js" in body
    status, ctype, body = get("/static/worklet.js")
    assert status == 200 and ctype.startswith("text/javascript") and b"registerProcessor" in body
    for bad in ("/static/../server.py", "/static/%2e%2e/server.py", "/static/vendor/../../http.py"):
        status, _, body = get(bad)
        assert status == 404 and b"import" not in body, bad
    status, ctype, body = get("/healthz")
    health = json.loads(body)
    assert status == 200 and ctype == "application/json" and health["status"] == "ok"
    assert health["model"] == MODEL and health["bandwidths"] and health["latency_presets"]
