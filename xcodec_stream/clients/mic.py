"""Sound-card streaming through the daemon: full-duplex mic loopback, mic publishing, room playback (sounddevice)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..serving.protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..streaming.resample import StreamingResampler
from .client import Client, ServerError
from .latency import LatencyTracker, format_report


class JitterBuffer:
    """Playback FIFO shared by the network side (push) and the audio callback (pull), thread-safe.

    Playback starts once `target` samples are buffered, and again after every underrun (so that a late
    packet costs one gap, not a crackle per block). More than `max_samples` buffered drops the oldest
    (the clock of the sound card runs a little faster than the sender's, or a burst arrived).
    """

    def __init__(self, target: int, max_samples: int) -> None:
        self.target = max(0, target)
        self.max_samples = max(max_samples, self.target + 1)
        self._chunks: deque[np.ndarray] = deque()
        self._level = 0
        self._playing = False
        self._ending = False
        self._lock = threading.Lock()
        self.underruns = 0
        self.dropped = 0
        self.played = 0
        self.silence = 0

    @property
    def level(self) -> int:
        return self._level

    def end(self) -> None:
        """No more input: play out what is left even if it is less than the target."""
        with self._lock:
            self._ending = True

    def push(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if not x.size:
            return
        with self._lock:
            self._chunks.append(x)
            self._level += x.size
            while self._level > self.max_samples:
                over = self._level - self.max_samples
                head = self._chunks[0]
                if head.size <= over:
                    self._chunks.popleft()
                    self._level -= head.size
                    self.dropped += head.size
                else:
                    self._chunks[0] = head[over:]
                    self._level -= over
                    self.dropped += over

    def pull(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            if not self._playing:
                if self._level < (1 if self._ending else max(self.target, 1)):
                    self.silence += n
                    return out
                self._playing = True
            got = 0
            while got < n and self._chunks:
                head = self._chunks[0]
                take = min(n - got, head.size)
                out[got : got + take] = head[:take]
                got += take
                if take == head.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
            self._level -= got
            self.played += got
            if got < n:
                self.underruns += 1
                self.silence += n - got
                self._playing = False
        return out


def client_rate_for(device_rate: int) -> int:
    """The rate to ask the server for: the device's, clamped to what the protocol allows."""
    return min(max(int(device_rate), MIN_SAMPLE_RATE), MAX_SAMPLE_RATE)


def device_rate_of(device: Any, kind: str) -> int:
    import sounddevice as sd

    return int(round(sd.query_devices(device, kind)["default_samplerate"]))


def _default_stream_factory(kind: str) -> Callable[..., Any]:
    import sounddevice as sd

    return {"duplex": sd.Stream, "input": sd.InputStream, "output": sd.OutputStream}[kind]


@dataclass
class MicReport:
    text: str
    done: dict
    underruns: int
    played: int
    dropped_playback: int


async def run_mic(
    url: str,
    *,
    mode: str = "loopback",
    room: str | None = None,
    input_device: Any = None,
    output_device: Any = None,
    device_rate: int | None = None,
    chunk_ms: float = 20.0,
    jitter_ms: float = 80.0,
    seconds: float | None = None,
    latency: str | None = None,
    bandwidth: float | None = None,
    stop: asyncio.Event | None = None,
    stream_factory: Callable[[str], Callable[..., Any]] = _default_stream_factory,
) -> MicReport:
    """Microphone -> server -> speaker (loopback), or microphone -> room (publish). Runs for `seconds`
    (or until `stop` is set), then flushes so that the last words are not lost."""
    duplex = mode == "loopback"
    if device_rate is None:
        device_rate = device_rate_of(input_device, "input")
    rate = client_rate_for(device_rate)
    block = max(1, round(chunk_ms * device_rate / 1000))
    up = StreamingResampler(device_rate, rate) if rate != device_rate else None
    down = StreamingResampler(rate, device_rate) if rate != device_rate else None
    jitter = JitterBuffer(
        round(jitter_ms * device_rate / 1000), round(4 * jitter_ms * device_rate / 1000) + block
    )
    client = await Client.connect(
        url, mode=mode, room=room, sample_rate=rate, latency=latency, bandwidth=bandwidth
    )
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
    tracker = LatencyTracker()
    stop = stop or asyncio.Event()
    status_flags: list[str] = []

    def callback(indata, outdata, frames, t, status) -> None:  # audio thread: copy and hand over, no waiting
        if status:
            status_flags.append(str(status))
        loop.call_soon_threadsafe(blocks.put_nowait, np.array(indata[:, 0], dtype=np.float32))
        if outdata is not None:
            outdata[:, 0] = jitter.pull(frames)

    def input_only(indata, frames, t, status) -> None:
        callback(indata, None, frames, t, status)

    sent = 0
    done: dict = {}

    async def send() -> None:
        nonlocal sent
        while True:
            x = await blocks.get()
            if x is None:
                break
            if up is not None:
                x = up.process(x)
            seq = await client.send_audio(x)
            sent += x.size
            tracker.sent(seq, sent)
        if up is not None:
            tail = up.flush()
            if tail.size:
                seq = await client.send_audio(tail)
                sent += tail.size
                tracker.sent(seq, sent)
        await client.flush()

    async def receive() -> None:
        nonlocal done
        out_end = 0
        while True:
            msg = await client.recv()
            tracker.acked(msg.get("seq_end"))
            if msg["type"] == "audio":
                out_end = msg["sample"] + msg["pcm"].size
                tracker.output(out_end)
                y = down.process(msg["pcm"]) if down is not None else msg["pcm"]
                jitter.push(y)
            elif msg["type"] == "done":
                done = msg
                if down is not None:
                    jitter.push(down.flush())
                jitter.end()
                return

    kind = "duplex" if duplex else "input"
    factory = stream_factory(kind)
    kwargs: dict[str, Any] = {
        "samplerate": device_rate,
        "blocksize": block,
        "channels": 1,
        "dtype": "float32",
        "callback": callback if duplex else input_only,
    }
    kwargs["device"] = (input_device, output_device) if duplex else input_device
    receiver = asyncio.create_task(receive())
    sender = asyncio.create_task(send())
    t0 = time.monotonic()
    try:
        with factory(**kwargs):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.wait(
                        {asyncio.ensure_future(stop.wait()), receiver}, return_when=asyncio.FIRST_COMPLETED
                    )
            blocks.put_nowait(None)
            await sender
            await receiver
            if duplex:  # let the jitter buffer play out what came back
                while jitter.level and time.monotonic() - t0 < (seconds or 0) + 10:
                    await asyncio.sleep(0.02)
    finally:
        for task in (sender, receiver):
            task.cancel()
        await client.close()
    algorithmic = client.ready["algorithmic_latency_ms"] + (jitter_ms if duplex else 0.0)
    text = format_report(
        tracker,
        algorithmic_ms=algorithmic,
        chunk_ms=chunk_ms,
        realtime=True,
        n_chunks=len(tracker.processing_ms),
        dropped=int(done.get("dropped", 0)),
        extra=f"device {device_rate} Hz, server at {rate} Hz"
        + (
            f", jitter buffer {jitter_ms:g} ms (included above), {jitter.underruns} underruns"
            if duplex
            else ""
        )
        + (f", audio status: {sorted(set(status_flags))}" if status_flags else ""),
    )
    return MicReport(text, done, jitter.underruns, jitter.played, jitter.dropped)


async def play_room(
    url: str,
    room: str,
    *,
    output_device: Any = None,
    device_rate: int | None = None,
    jitter_ms: float = 120.0,
    stop: asyncio.Event | None = None,
    stream_factory: Callable[[str], Callable[..., Any]] = _default_stream_factory,
) -> dict:
    """Listen to a room on the speaker until the publisher ends (or `stop`)."""
    if device_rate is None:
        device_rate = device_rate_of(output_device, "output")
    rate = client_rate_for(device_rate)
    down = StreamingResampler(rate, device_rate) if rate != device_rate else None
    jitter = JitterBuffer(round(jitter_ms * device_rate / 1000), round(8 * jitter_ms * device_rate / 1000))
    client = await Client.connect(url, mode="listen", room=room, sample_rate=rate, want=["audio"])
    stop = stop or asyncio.Event()

    def callback(outdata, frames, t, status) -> None:
        outdata[:, 0] = jitter.pull(frames)

    done: dict = {}

    async def receive() -> None:
        nonlocal done
        while True:
            try:
                msg = await client.recv()
            except ServerError as exc:
                if exc.code == "closed" and done:
                    return
                raise
            if msg["type"] == "audio":
                jitter.push(down.process(msg["pcm"]) if down is not None else msg["pcm"])
            elif msg["type"] == "done":
                done = msg
                if down is not None:
                    jitter.push(down.flush())
                jitter.end()
                return

    factory = stream_factory("output")
    with factory(
        samplerate=device_rate, channels=1, dtype="float32", callback=callback, device=output_device
    ):
        receiver = asyncio.create_task(receive())
        await asyncio.wait(
            {asyncio.ensure_future(stop.wait()), receiver}, return_when=asyncio.FIRST_COMPLETED
        )
        while jitter.level and not stop.is_set():
            await asyncio.sleep(0.02)
        receiver.cancel()
    await client.close()
    return {**done, "underruns": jitter.underruns}
