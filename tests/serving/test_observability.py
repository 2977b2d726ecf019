"""GET /metrics (Prometheus text format) and structured logs carrying session ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.error
import urllib.request

import numpy as np
from fakes import FakeModel
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import audio, frame, raw, running_server, speech

from xcodec_stream.cli.main import build_parser
from xcodec_stream.clients.client import Client, stream
from xcodec_stream.serving.logs import setup_logging


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_endpoint() -> None:
    x = speech(seconds=0.5)
    async with running_server(FakeModel()) as srv:
        base = srv.url.replace("ws", "http", 1)
        c = await Client.connect(srv.url, mode="encode")
        r = await stream(c, x)
        await c.close()
        listener_pub = await Client.connect(srv.url, mode="publish", room="m")
        async with raw(srv.url) as bad:
            await bad.send(audio(3, np.zeros(320, "<f4")))  # bad_seq
            assert (await bad.until("error"))["code"] == "bad_seq"
            await bad.send(frame(type="flush"))
            await bad.until("done")
            status, ctype, text = await asyncio.to_thread(_get, base + "/metrics")
        await listener_pub.close()
    assert status == 200 and ctype.startswith("text/plain; version=")
    m = samples(text)
    assert m[("xcodec_stream_sessions", (("mode", "loopback"),))] == 1
    assert m[("xcodec_stream_sessions", (("mode", "publish"),))] == 1
    assert m[("xcodec_stream_sessions", (("mode", "encode"),))] == 0
    assert m[("xcodec_stream_sessions_opened_total", (("mode", "encode"),))] == 1
    assert m[("xcodec_stream_errors_total", (("code", "bad_seq"),))] == 1
    assert m[("xcodec_stream_step_seconds_count", ())] >= 2
    assert m[("xcodec_stream_batch_size_count", ())] >= 2
    assert m[("xcodec_stream_received_bytes_total", ())] > x.size * 4
    assert m[("xcodec_stream_sent_bytes_total", ())] > 0
    assert m[("xcodec_stream_dropped_messages_total", ())] == r.done["dropped"] == 0
    for gauge in (
        "output_queue_messages",
        "output_queue_seconds",
        "input_backlog_seconds",
        "sessions_detached",
    ):
        assert (f"xcodec_stream_{gauge}", ()) in m


async def test_metrics_count_dropped_messages_and_can_be_disabled() -> None:
    async with running_server(FakeModel(), max_output_queue_ms=20, max_chunks_per_step=1) as srv:
        async with raw(srv.url) as r:
            # the writer is held until the worker has produced all the output, which then overflows the
            # 20 ms output bound (20 chunks of 50 ms): deterministic, whatever the machine's speed
            (session,) = srv.sessions.values()
            gate, get = asyncio.Event(), session.out.get

            async def held() -> dict:
                await gate.wait()
                return await get()

            session.out.get = held
            for seq in range(20):
                await r.send(audio(seq, np.zeros(800, "<f4")))
            await r.send(frame(type="flush"))
            while session.done_msg is None:
                await asyncio.sleep(0.01)
            gate.set()
            done = await r.until("done")
        status, _, text = await asyncio.to_thread(_get, srv.url.replace("ws", "http", 1) + "/metrics")
    assert samples(text)[("xcodec_stream_dropped_messages_total", ())] == done["dropped"] > 0
    async with running_server(FakeModel(), metrics_enabled=False) as srv:
        status, _, _ = await asyncio.to_thread(_get, srv.url.replace("ws", "http", 1) + "/metrics")
        assert status == 404


async def test_json_logs_carry_the_session_id() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("info", "json", out)
    try:
        async with running_server(FakeModel()) as srv:
            c = await Client.connect(srv.url, name="log-test")
            sid = c.ready["session"]
            await stream(c, speech(seconds=0.2))
            c.ws.transport.abort()  # a dropped connection is logged too
            await asyncio.sleep(0.1)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    mine = [r for r in records if r.get("session") == sid]
    assert {"ts", "level", "logger", "message"} <= set(records[0])
    assert any("ready: loopback" in r["message"] and "log-test" in r["message"] for r in mine)
    assert any("connection lost" in r["message"] for r in mine)


def test_text_log_format_and_serve_flag() -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("info", "text", out)
    try:
        logging.getLogger("xcodec_stream.test").info("hello %s", "there", extra={"session": 7})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert out.getvalue().rstrip().endswith("xcodec_stream.test: hello there [session=7]")
    args = build_parser().parse_args(["serve", "--log-format", "json"])
    assert args.log_format == "json"
