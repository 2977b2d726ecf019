"""SIGTERM to a real `xcodec-stream serve` process: no new connections, every open session flushed (its client
gets the remaining output and `done`), then closed with 1001, and the process exits 0 within a bounded time."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import speech
from websockets.exceptions import InvalidHandshake

from xcodec_stream.clients.client import Client, ServerError, stream

DRAIN_S = 30.0
CLI = Path(sys.executable).with_name("xcodec-stream")


def start_daemon(tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    config = tmp_path / "serve.toml"
    config.write_text(
        "[server]\nmax_sessions = 4\n"
        f"drain_timeout_s = {DRAIN_S}\n"
        '[stream]\npresets = ["balanced"]\n[worker]\nbatch_wait_ms = 5.0\n'
    )
    log = tmp_path / "serve.log"
    cmd = [str(CLI), "serve", "--config", str(config), "--model", "random:tiny", "--device", "cpu",
           "--port", "0", "--log-format", "json"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        m = re.search(r"serving (ws://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return proc, m.group(1), log
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the daemon did not start:\n{log.read_text()}")


@pytest.mark.skipif(not CLI.exists(), reason="the xcodec-stream console script is not installed")
async def test_sigterm_drains_sessions_and_exits_0(tmp_path: Path) -> None:
    proc, url, log = await asyncio.to_thread(start_daemon, tmp_path)
    try:
        x = speech(seconds=2.0)
        loop_a = await Client.connect(url, mode="loopback")
        loop_b = await Client.connect(url, mode="loopback", sample_rate=48000 // 2)
        enc = await Client.connect(url, mode="encode")
        signals = [x, np.interp(np.arange(x.size * 3 // 2) / 1.5, np.arange(x.size), x).astype(np.float32), x]
        clients = [loop_a, loop_b, enc]
        tasks = [
            asyncio.create_task(stream(c, s, chunk_ms=20, realtime=True))
            for c, s in zip(clients, signals, strict=True)
        ]
        while any(c.seq < 25 for c in clients):  # half a second in
            await asyncio.sleep(0.02)
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises((OSError, InvalidHandshake, ServerError)):  # no new connections while draining
            await Client.connect(url, open_timeout=5)
        results = await asyncio.gather(*tasks)
        closes = []
        for c in clients:
            with pytest.raises(ServerError) as info:
                while True:
                    await c.recv()
            await asyncio.wait_for(c.ws.wait_closed(), 10)  # the close frame follows the error
            closes.append((info.value.code, c.ws.close_code))
        rc = await asyncio.to_thread(proc.wait, DRAIN_S + 30)
        elapsed = time.monotonic() - t_term
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0, text
    assert closes == [("shutting_down", 1001)] * 3
    for r, c in zip(results, clients, strict=True):
        done = r.done
        assert done["reason"] == "shutting_down" and done["dropped"] == 0
        # everything the server accepted came back: the flush pushed it through the codec
        assert done["samples_in"] > 0 and c.seq > 25
        if c.ready["mode"] == "loopback":
            assert done["samples_out"] == done["samples_in"] == r.audio.size
        else:
            n16 = done["samples_in"]
            assert done["frames_out"] == -(-n16 // 320) == r.codes.shape[1]
    # only chunks sent after the drain began were refused, and only with bad_state (after flush)
    assert all(e["code"] == "bad_state" for r in results for e in r.errors)
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    messages = [r["message"] for r in records]
    assert any(m.startswith("stopping: no new connections") for m in messages) and messages[-1] == "stopped"
    assert elapsed < DRAIN_S + 30
    print(
        f"\nSIGTERM drain: {len(clients)} sessions flushed ("
        + ", ".join(
            f"{r.done['samples_in']} in / {r.done['samples_out']} out / {r.done['frames_out']} frames"
            for r in results
        )
        + f"), closed 1001, exit {rc} {elapsed:.1f} s after the signal"
    )
