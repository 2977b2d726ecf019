"""Headless Chromium with a fake microphone (a speech clip) against a real daemon: checks the audio the page got."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from e2e_stack import SPEECH, Daemon, align, padded_clip, reference_loopback, write_wav

from xcodec_stream.streaming.resample import resample

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Flags from the tested recipe: fake camera/mic with a WAV file, no permission prompt, no sound card needed.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
CAPTURE_S = 5.0  # the clip is 4.5 s with its lead silence; the rest is silence
STOI_FLOOR = (
    0.6  # speech-small through the page at `balanced` and `low` (its model card has the offline figures)
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def decode_f32(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


@pytest.fixture
async def browser_for(tmp_path: Path) -> AsyncIterator[Callable]:
    """`await browser_for(wav)` -> a Chromium whose microphone plays `wav` once; skips if Chromium is missing."""
    chromium = find_chromium()
    if chromium is None:
        reason = "Chromium not installed (Debian package `chromium`; scripts/system-deps.sh installs it)"
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        print(f"\nSKIP: playwright for Python not installed: {exc}")
        pytest.skip(f"playwright for Python not installed: {exc}")
    async with async_playwright() as p:
        browsers = []

        async def launch(wav: Path):
            args = [*FLAGS, f"--use-file-for-fake-audio-capture={wav}%noloop"]
            try:
                b = await p.chromium.launch(executable_path=chromium, args=args)
            except Exception as exc:  # a broken install, missing libraries, no /dev/shm...
                reason = f"Chromium ({chromium}) cannot start: {str(exc).splitlines()[0]}"
                print(f"\nSKIP: {reason}")
                pytest.skip(reason)
            browsers.append(b)
            return b

        try:
            yield launch
        finally:
            for b in browsers:
                await b.close()


async def open_page(browser, url: str, problems: list[str]):
    page = await browser.new_page(viewport={"width": 1100, "height": 640})
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text}")
    )
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status} {r.url}"))
    await page.goto(url)
    # polled from Python: `page.evaluate` runs outside the page's Content Security Policy, while
    # `wait_for_function`'s in-page polling needs 'unsafe-eval', which the page (rightly) forbids
    deadline = asyncio.get_running_loop().time() + 30.0
    while not await page.evaluate("!!(window.xcs && window.xcs.serverInfo && window.xcs.serverInfo.status)"):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(
                f"the page at {url} did not load the server's /healthz within 30 s: {problems}"
            )
        await asyncio.sleep(0.05)
    return page


def save_screenshot(png: bytes, tmp_path: Path) -> None:
    (tmp_path / "browser.png").write_bytes(png)
    if os.environ.get("XCS_UPDATE_DOCS") == "1":  # refresh the screenshot kept in docs/
        DOCS.mkdir(exist_ok=True)
        (DOCS / "browser.png").write_bytes(png)


@pytest.mark.parametrize("latency", ["balanced", "low"])
async def test_loopback_page_plays_the_codec_output(
    browser_for, request, tmp_path: Path, latency: str
) -> None:
    """The page's loopback is the codec's output, whole and in place; prints the page's mouth-to-ear figure
    (docs/E2E.md keeps the measured values per preset)."""
    rate = 48000
    clip = padded_clip(rate)
    # the daemon first: the fake microphone plays from Chromium's launch on, so a daemon that takes long to
    # start (random:tiny calibrates) made the page record only the clip's end (browser_for has already
    # skipped if Chromium is missing: no daemon is started for a skipped test)
    daemon: Daemon = request.getfixturevalue("daemon")
    browser = await browser_for(write_wav(tmp_path / "mic.wav", clip, rate))
    problems: list[str] = []
    page = await open_page(browser, daemon.http_url + "/", problems)

    await page.evaluate(
        f"xcs.start({{record: true, mode: 'loopback', sampleRate: {rate}, latency: '{latency}'}})"
    )
    await page.wait_for_timeout(1000 * CAPTURE_S)
    await page.evaluate("xcs.snapshot()")  # the live figures, before the flush
    if latency == "balanced":
        save_screenshot(await page.screenshot(full_page=True), tmp_path)  # live: figures, meters, waveforms
    res = await page.evaluate("xcs.stop().then(() => xcs.result())")
    sent, received = decode_f32(res["sent"]), decode_f32(res["received"])
    live, final = res["live"], res["stats"]
    assert problems == [] and final["errors"] == []

    # The server received the microphone: what the page sent is the clip (fake device, no processing).
    mic = align(clip, sent, max_lag=rate)
    assert mic.r > 0.99, mic
    assert final["done"]["samples_in"] == len(sent) > 0.8 * CAPTURE_S * rate

    # Every sample came back, in place: output length == input length after the flush, no gap.
    assert res["receivedStart"] == 0
    assert len(received) == len(sent) == final["done"]["samples_out"]
    assert final["serverDropped"] == 0 and final["done"]["dropped"] == 0

    # It is the codec's output for that input: the same PCM streamed by a Python client gives the same audio.
    expected, ready, _ = await reference_loopback(daemon.ws_url, sent, rate, latency=latency)
    assert len(expected) == len(received)
    same = align(expected, received, max_lag=rate // 10)
    err = float(np.max(np.abs(expected - received)))
    print(
        f"\nbrowser loopback @ {rate} Hz: {len(sent) / rate:.2f} s sent, page vs reference r = {same.r:.6f} "
        f"(lag {same.lag}, max |err| {err:.2e}); sent vs clip r = {mic.r:.5f}"
    )
    assert same.lag == 0 and same.r > 0.99, same
    assert np.std(received) > 1e-3  # not silence, nor a constant
    # Speech came back: STOI of the page's output against what its microphone sent, at the codec's rate, as
    # intelligible as the offline codec makes the same input (streaming and the page cost little).
    import torch
    from pystoi import stoi

    sent16 = resample(sent, rate, 16000)
    offline = request.getfixturevalue("served_model")(torch.from_numpy(sent16)[None, None]).audio_values
    page_stoi = stoi(sent16, resample(received, rate, 16000), 16000)
    offline_stoi = stoi(sent16, offline[0, 0, : len(sent16)].numpy(), 16000)
    print(
        f"[{latency}] STOI of the loopback against the microphone: {page_stoi:.3f} (offline codec {offline_stoi:.3f})"
    )
    if SPEECH:  # random weights (XCS_E2E_MODEL=random:...) make no speech: the figure is only printed
        assert page_stoi >= STOI_FLOOR and page_stoi >= offline_stoi - 0.1, (page_stoi, offline_stoi)

    # The page played it to the end (the flush's tail included): every received sample was played or, if the
    # jitter buffer had to catch up after a stall, counted as skipped.
    skipped = round(final["playerDroppedMs"] * rate / 1000)
    assert final["playedSamples"] + skipped == len(received)
    assert live["algorithmicLatencyMs"] == ready["algorithmic_latency_ms"]
    # How many round trips were measured depends on how the server batched under load: ask only that the
    # figure exists.
    assert live["rttCount"] > 0 and live["rttP50Ms"] > 0
    assert live["codesKbps"] > 0 and final["codeFrames"] == final["done"]["frames_out"]
    assert re.fullmatch(r"\d+ ms", res["dom"]["rttP50"]) and re.fullmatch(r"\d+ ms", res["dom"]["algo"])
    print(
        f"[{latency}] round trip p50 {live['rttP50Ms']:.0f} ms (algorithmic {live['algorithmicLatencyMs']:.0f} ms), "
        f"mouth-to-ear estimate {live['mouthToEarMs']:.0f} ms, codes {live['codesKbps']:.2f} kbps, "
        f"jitter buffer {live['bufferedMs']:.0f} ms, underruns {final['underruns']}"
    )


async def test_room_publish_and_listen_pages(browser_for, request, tmp_path: Path) -> None:
    """One page publishes its microphone to a room, a second page (at 44.1 kHz) listens to it."""
    rate, listen_rate = 48000, 44100
    clip = padded_clip(rate)
    daemon: Daemon = request.getfixturevalue("daemon")  # before the launch, as in the loopback test
    browser = await browser_for(write_wav(tmp_path / "mic.wav", clip, rate))
    problems: list[str] = []
    url = daemon.http_url + "/"
    publisher, listener = await open_page(browser, url, problems), await open_page(browser, url, problems)

    await publisher.evaluate(
        f"xcs.start({{record: true, mode: 'publish', room: 'e2e', sampleRate: {rate}, latency: 'balanced'}})"
    )
    await listener.evaluate(
        f"xcs.start({{record: true, mode: 'listen', room: 'e2e', sampleRate: {listen_rate}}})"
    )
    await publisher.wait_for_timeout(1000 * (CAPTURE_S - 0.5))
    await listener.evaluate("xcs.snapshot()")
    pub = await publisher.evaluate("xcs.stop().then(() => xcs.result())")
    # The room's end stops the listener: it plays out its buffer and closes by itself.
    lis = await listener.evaluate("xcs.stopped().then(() => xcs.result())")
    save_screenshot_room = await listener.screenshot(full_page=True)
    (tmp_path / "browser-listen.png").write_bytes(save_screenshot_room)
    assert problems == [] and pub["stats"]["errors"] == [] and lis["stats"]["errors"] == []
    assert lis["stats"]["done"]["reason"] == "publisher_done"

    sent, heard = decode_f32(pub["sent"]), decode_f32(lis["received"])
    assert pub["stats"]["done"]["samples_in"] == len(sent)
    assert lis["sampleRate"] == listen_rate and len(heard) > 2 * listen_rate
    # The room decodes the publisher's codes once: a loopback of the same input, taken to 44.1 kHz, is what the
    # listener must hear, from the point where it joined (its `sample` axis starts there).
    expected, _, _ = await reference_loopback(daemon.ws_url, sent, rate, latency="balanced")
    expected = resample(expected, rate, listen_rate)
    got = align(expected, heard, max_lag=len(expected))
    joined_s = -got.lag / listen_rate
    print(
        f"\nroom: listener joined {joined_s:.3f} s into the stream (room frame {lis['room']['frame']}), "
        f"heard {len(heard) / listen_rate:.2f} s, r = {got.r:.6f}"
    )
    assert 0 <= joined_s < 2.0 and got.r > 0.99, got
    skipped = round(lis["stats"]["playerDroppedMs"] * listen_rate / 1000)
    assert lis["stats"]["serverDropped"] == 0 and lis["stats"]["playedSamples"] + skipped == len(heard)


async def test_page_resyncs_after_a_rejected_chunk(browser_for, tmp_path: Path) -> None:
    """An overloaded server refuses a chunk (`rate_limited`): the chunks already in flight are then out of
    sequence. The page must stop, ask where the server stands (`stats`), and go on without a second error."""
    import websockets

    from xcodec_stream.serving.http import HttpReply, HttpRouter
    from xcodec_stream.serving.protocol import pack, unpack_server_message

    accepted: list[int] = []
    log: list[str] = []

    async def handler(ws) -> None:  # a strict subset of the protocol: seq must be the next one, once
        expected, received, refused = 0, 0, False
        async for frame in ws:
            m = unpack_server_message(frame)
            if m["type"] == "hello":
                await ws.send(pack({"type": "ready", "session": 1, "algorithmic_latency_ms": 0.0, "n_q": 1}))
            elif m["type"] == "audio":
                n = len(m["pcm"])
                if m["seq"] == 10 and not refused:
                    refused = True
                    code = "rate_limited"
                elif m["seq"] != expected:
                    code = "bad_seq"
                else:
                    await ws.send(
                        pack({"type": "audio", "sample": received, "pcm": m["pcm"], "seq_end": expected})
                    )
                    accepted.append(m["seq"])
                    expected, received = expected + 1, received + n
                    continue
                log.append(code)
                await ws.send(
                    pack({"type": "error", "code": code, "message": f"seq {m['seq']}", "fatal": False})
                )
            elif m["type"] == "stats":
                await ws.send(pack({"type": "stats", "received": received, "lag_ms": 0.0}))
            elif m["type"] == "flush":
                await ws.send(
                    pack({"type": "done", "samples_in": received, "samples_out": received, "dropped": 0})
                )

    router = HttpRouter()
    router.add("/healthz", lambda request: HttpReply.json({"status": "ok", "model": "echo"}))
    rate = 48000
    browser = await browser_for(write_wav(tmp_path / "mic.wav", padded_clip(rate), rate))
    async with websockets.serve(handler, "127.0.0.1", 0, process_request=router.process_request) as srv:
        port = srv.sockets[0].getsockname()[1]
        problems: list[str] = []
        page = await open_page(browser, f"http://127.0.0.1:{port}/", problems)
        res = await page.evaluate(f"xcs.run(1.5, {{mode: 'loopback', sampleRate: {rate}}})")
    st = res["stats"]
    assert accepted == list(range(len(accepted))) and len(accepted) > 30  # seq went on, contiguous
    assert log[0] == "rate_limited" and st["rejected"] == len(log)
    assert len(st["errors"]) == 1 and "resyncing" in st["errors"][0]  # one error shown, not one per chunk
    assert st["done"]["samples_in"] == len(decode_f32(res["received"])) == st["receivedSamples"]
    assert problems == [f"console warning: xcodec-stream: {st['errors'][0]}"]
