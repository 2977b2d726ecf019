"""The plain-HTTP router: exact paths, prefixes, WebSocket upgrades passed through."""

from __future__ import annotations

from xcodec_stream.serving.http import HttpReply, HttpRouter


def test_router_matching() -> None:
    r = HttpRouter()
    a, b, c = (
        (lambda req: HttpReply.text("a")),
        (lambda req: HttpReply.text("b")),
        (lambda req: HttpReply.text("c")),
    )
    r.add("/healthz", a)
    r.add_prefix("/static/", b)
    r.add_prefix("/static/deep/", c)
    assert r.match("/healthz") is a and r.match("/healthz/x") is None
    assert r.match("/static/x.js") is b and r.match("/static/deep/y") is c
    assert r.paths == ["/healthz", "/static/*", "/static/deep/*"]
    reply = HttpReply.json({"x": 1}, status=201)
    assert reply.status == 201 and reply.content_type == "application/json" and reply.body == b'{"x": 1}\n'
