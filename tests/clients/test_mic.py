"""Microphone loopback and room playback through the daemon, with a fake sound card (no audio hardware)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from fakes import FakeModel
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client, stream
from xcodec_stream.clients.mic import play_room, run_mic
from xcodec_stream.streaming.resample import resample


class FakeCard:
    """Stands in for sounddevice's Stream/InputStream/OutputStream: calls the callback from its own thread
    at the device rate, feeding `signal` (then silence) as the microphone and recording the speaker."""

    def __init__(self, kind: str, signal: np.ndarray, record: list[np.ndarray]) -> None:
        self.kind, self.signal, self.record = kind, signal, record

    def __call__(self, *, samplerate, channels, dtype, callback, blocksize=0, device=None):
        self.rate, self.callback = samplerate, callback
        self.block = blocksize or 256
        return self

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pos, t0 = 0, time.monotonic()
        while not self._stop.is_set():
            n = self.block
            mic = np.zeros((n, 1), np.float32)
            piece = self.signal[pos : pos + n]
            mic[: piece.size, 0] = piece
            out = np.zeros((n, 1), np.float32)
            if self.kind == "duplex":
                self.callback(mic, out, n, None, None)
            elif self.kind == "input":
                self.callback(mic, n, None, None)
            else:
                self.callback(out, n, None, None)
            self.record.append(out[:, 0].copy())
            pos += n
            delay = t0 + pos / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)


@pytest.mark.parametrize("device_rate", [44100, 96000])
async def test_mic_loopback_any_device_rate(device_rate: int) -> None:
    x = resample(speech(seconds=0.6), 16000, device_rate)
    record: list[np.ndarray] = []
    async with running_server(FakeModel()) as srv:
        report = await run_mic(
            srv.url,
            device_rate=device_rate,
            seconds=0.8,
            jitter_ms=60,
            stream_factory=lambda kind: FakeCard(kind, x, record),
        )
    done = report.done
    client_rate = min(device_rate, 48000)
    assert done["samples_in"] == done["samples_out"] > 0.7 * client_rate
    # everything that came back reached the speaker (played, or dropped by an overfull buffer)
    expected = (
        done["samples_out"]
        if device_rate == client_rate
        else -(-done["samples_out"] * device_rate // client_rate)
    )
    assert report.played + report.dropped_playback == expected
    assert "algorithmic latency" in report.text and "end to end" in report.text


async def test_mic_publish_and_speaker_listener() -> None:
    x = speech(seconds=0.5)
    record: list[np.ndarray] = []
    async with running_server(FakeModel()) as srv:
        pub_ready = asyncio.Event()

        async def publish():
            # the room must exist before the listener joins: open it with a short file stream first
            c = await Client.connect(srv.url, mode="publish", room="mic")
            pub_ready.set()
            await asyncio.sleep(0.3)
            return await stream(c, x, chunk_ms=20, realtime=True)

        task = asyncio.create_task(publish())
        await pub_ready.wait()
        done = await play_room(
            srv.url,
            "mic",
            device_rate=16000,
            jitter_ms=40,
            stream_factory=lambda kind: FakeCard(kind, x, record),
        )
        await task
    assert done["reason"] == "publisher_done" and done["samples_out"] == x.size
    played = np.concatenate(record)
    assert np.abs(played).max() > 0
