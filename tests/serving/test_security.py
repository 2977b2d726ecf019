"""Auth tokens at the handshake (header or query parameter), the Origin allow-list, TLS, the default bind, and
tokens kept out of the logs."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeModel
from serving_helpers import running_server, speech
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from xcodec_stream.clients.client import Client, ServerError, stream
from xcodec_stream.serving.config import TOKENS_ENV, load_config, tokens_from_env
from xcodec_stream.serving.logs import redact, setup_logging

TOKEN = "s3cret-Token_0123456789"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


async def _status(url: str, **kw) -> int:
    """HTTP status of a WebSocket handshake (101 = accepted)."""
    try:
        async with connect(url, compression=None, **kw):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def _get(url: str, headers: dict | None = None, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_token_header_query_and_wrong_token() -> None:
    async with running_server(FakeModel(), auth_tokens=("other-token", TOKEN)) as srv:
        assert await _status(srv.url) == 401
        assert await _status(srv.url, additional_headers={"Authorization": "Bearer nope"}) == 401
        assert await _status(srv.url + "/?token=nope") == 401
        assert await _status(srv.url, additional_headers={"Authorization": f"Basic {TOKEN}"}) == 401
        assert await _status(srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) == 101
        assert await _status(f"{srv.url}/?token={TOKEN}") == 101
        with pytest.raises(ServerError) as info:
            await Client.connect(srv.url, token="wrong")
        assert info.value.code == "unauthorized"
        # a session with the token works end to end
        c = await Client.connect(srv.url, token=TOKEN)
        x = speech(seconds=0.3)
        r = await stream(c, x)
        await c.close()
        assert r.done["samples_out"] == x.size
        # health stays open (load balancers); metrics need the token unless [metrics] public
        base = srv.url.replace("ws", "http", 1)
        assert (await asyncio.to_thread(_get, base + "/healthz"))[0] == 200
        assert (await asyncio.to_thread(_get, base + "/metrics"))[0] == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert (await asyncio.to_thread(_get, base + "/metrics", auth))[0] == 200
        body = (await asyncio.to_thread(_get, base + "/metrics", auth))[1].decode()
        assert 'xcodec_stream_errors_total{code="unauthorized"} 6.0' in body


def test_tokens_from_environment_and_never_in_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(TOKENS_ENV, f"a1, b2 {TOKEN}")
    assert tokens_from_env() == ("a1", "b2", TOKEN)
    p = tmp_path / "c.toml"
    p.write_text('[auth]\ntokens = ["file-token"]\n')
    cfg = load_config(p)
    assert cfg.auth_tokens == ("file-token", "a1", "b2", TOKEN) and cfg.auth_enabled
    assert TOKEN not in repr(cfg)
    p.write_text(f'[auth]\ntokens = "{TOKEN}"\n')  # wrong type: the error must not echo it
    with pytest.raises(ValueError) as info:
        load_config(p)
    assert TOKEN not in str(info.value)


async def test_tokens_never_logged() -> None:
    """Debug logging of everything (websockets logs request lines and headers): the token never shows."""
    stream_ = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("debug", "text", stream_)
    try:
        async with running_server(FakeModel(), auth_tokens=(TOKEN,)) as srv:
            await _status(f"{srv.url}/?token={TOKEN}")
            await _status(srv.url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
            await _status(f"{srv.url}/?token={TOKEN}x")  # a wrong one is not logged either
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = stream_.getvalue()
    assert "unauthorized WebSocket handshake" in text and "GET /?token=***" in text
    assert TOKEN not in text
    assert redact(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer ***"


async def test_origin_allow_list() -> None:
    async with running_server(FakeModel(), allowed_origins=("https://app.example",)) as srv:
        assert await _status(srv.url, origin="https://app.example") == 101
        assert await _status(srv.url, origin="https://evil.example") == 403
        assert await _status(srv.url) == 101  # no Origin header: not a browser


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        from cryptography import x509  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    crt = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(pkey, hashes.SHA256())
    )
    cert.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


async def test_tls_wss_and_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))
    async with running_server(FakeModel(), tls_cert=str(cert), tls_key=str(key)) as srv:
        assert srv.url.startswith("wss://127.0.0.1:")
        c = await Client.connect(srv.url, ssl=ctx)
        x = speech(seconds=0.3)
        r = await stream(c, x)
        await c.close()
        assert r.done["samples_in"] == r.done["samples_out"] == x.size
        status, body = await asyncio.to_thread(
            _get, srv.url.replace("wss", "https", 1) + "/healthz", None, ctx
        )
        assert status == 200 and b'"status": "ok"' in body
        with pytest.raises((InvalidHandshake, OSError, TimeoutError)):  # plain ws:// to a TLS port
            await Client.connect(srv.url.replace("wss", "ws", 1), open_timeout=2)
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the cert
            await Client.connect(srv.url, ssl=ssl.create_default_context())


def test_tls_config_needs_both_files(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[tls]\ncert = "c.pem"\n')
    with pytest.raises(ValueError, match="both cert and key"):
        load_config(p)


async def test_default_binds_localhost_only() -> None:
    assert load_config().host == "127.0.0.1"
    for path in CONFIGS.glob("*.toml"):
        assert load_config(path).host == "127.0.0.1", path
    async with running_server(FakeModel()) as srv:
        assert {s.getsockname()[0] for s in srv._ws.sockets} == {"127.0.0.1"}


async def test_auth_off_by_default() -> None:
    async with running_server(FakeModel()) as srv:
        assert not srv.auth.enabled and await _status(srv.url) == 101
        c = await Client.connect(srv.url)
        await c.send_audio(np.zeros(320, np.float32))
        await c.close()
