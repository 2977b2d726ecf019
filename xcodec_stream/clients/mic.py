"""Sound-card streaming through the daemon: full-duplex mic loopback, mic publishing, room playback (sounddevice)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

import numpy as np

from ..serving.protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ..streaming.resample import StreamingResampler
from .client import Client, ServerError
from .latency import LatencyTracker, format_report


class JitterBuffer:
    """Playback FIFO shared by the network side (push) and the audio callback (pull), thread-safe.

    Playback starts once `target` samples are buffered, and again after every underrun (so that a late
    packet costs one gap, not a crackle per block). More than `max_samples` buffered drops the oldest.

    Adaptive (give `rate`): the target follows the measured arrival jitter: the spread, over the last
    `window_s`, of each message's lateness (arrival time minus its position / rate), plus `margin` samples,
    never below the `target` given (the minimum) nor above `max_target`. When the fill stays above the
    target + `slack` for `settle_s` of playback (the burst that follows a stall), the excess is skipped
    (counted in `skipped`): latency returns to the target instead of growing with every stall.
    """

    def __init__(
        self,
        target: int,
        max_samples: int,
        *,
        rate: int | None = None,
        max_target: int | None = None,
        margin: int = 0,
        window_s: float = 3.0,
        settle_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_target = self.target = max(0, target)
        self.max_samples = max(max_samples, self.target + 1)
        self.rate = rate
        self.max_target = max(
            self.min_target, max_target if max_target is not None else self.max_samples // 2
        )
        self.margin = margin
        self.window_s = window_s
        self.settle = round(settle_s * rate) if rate else 0
        self.slack = max(self.margin, round(0.02 * rate)) if rate else 0
        self.clock = clock
        self._chunks: deque[np.ndarray] = deque()
        self._level = 0
        self._playing = False
        self._ending = False
        self._lock = threading.Lock()
        self._pushed = 0
        self._lateness: deque[tuple[float, float]] = deque()  # (arrival time, arrival - position / rate)
        self._over = 0  # samples played while above target + slack
        self.underruns = 0
        self.dropped = 0
        self.skipped = 0
        self.played = 0
        self.silence = 0
        self.max_target_seen = self.target

    @property
    def level(self) -> int:
        return self._level

    @property
    def adaptive(self) -> bool:
        return self.rate is not None

    def end(self) -> None:
        """No more input: play out what is left even if it is less than the target."""
        with self._lock:
            self._ending = True

    def push(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if not x.size:
            return
        with self._lock:
            if self.adaptive:
                self._measure(x.size)
            self._chunks.append(x)
            self._level += x.size
            if self._level > self.max_samples:
                self.dropped += self._discard(self._level - self.max_samples)

    def _measure(self, n: int) -> None:
        now = self.clock()
        self._lateness.append((now, now - self._pushed / self.rate))
        self._pushed += n
        while self._lateness[0][0] < now - self.window_s:
            self._lateness.popleft()
        late = [d for _, d in self._lateness]
        spread = round((max(late) - min(late)) * self.rate) + self.margin
        self.target = min(self.max_target, max(self.min_target, spread))
        self.max_target_seen = max(self.max_target_seen, self.target)

    def _discard(self, n: int) -> int:
        """Drop the oldest `n` buffered samples (called under the lock)."""
        left = n
        while left and self._chunks:
            head = self._chunks[0]
            if head.size <= left:
                self._chunks.popleft()
                left -= head.size
            else:
                self._chunks[0] = head[left:]
                left = 0
        self._level -= n - left
        return n - left

    def pull(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            if not self._playing:
                if self._level < (1 if self._ending else max(self.target, 1)):
                    self.silence += n
                    return out
                self._playing = True
            if self.adaptive and not self._ending:
                self._settle(n)
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

    def _settle(self, n: int) -> None:
        """Latency control: a fill above target + slack for settle_s of playback is brought back to target."""
        if self._level - n > self.target + self.slack:
            self._over += n
            if self._over >= self.settle:
                self.skipped += self._discard(self._level - n - self.target)
                self._over = 0
        else:
            self._over = 0


def client_rate_for(device_rate: int) -> int:
    """The rate to ask the server for: the device's, clamped to what the protocol allows."""
    return min(max(int(device_rate), MIN_SAMPLE_RATE), MAX_SAMPLE_RATE)


def device_rate_of(device: Any, kind: str) -> int:
    import sounddevice as sd

    return int(round(sd.query_devices(device, kind)["default_samplerate"]))


def _default_stream_factory(kind: str) -> Callable[..., Any]:
    import sounddevice as sd

    return {"duplex": sd.Stream, "input": sd.InputStream, "output": sd.OutputStream}[kind]


MAX_JITTER_S = 1.0  # the adaptive target never goes above this


def playback_buffer(min_ms: float, device_rate: int, block: int) -> JitterBuffer:
    """The adaptive playback buffer of the sound-card clients: at least `min_ms`, one block of margin."""
    return JitterBuffer(
        round(min_ms * device_rate / 1000),
        round((2 * MAX_JITTER_S + min_ms / 1000) * device_rate) + block,
        rate=device_rate,
        max_target=round(MAX_JITTER_S * device_rate),
        margin=block,
    )


async def play_out(
    jitter: JitterBuffer, stream: Any, device_rate: int, block: int, *, deadline: float
) -> None:
    """Wait until the buffer is empty and the device has played it (its output latency + two blocks), so
    that closing the stream does not cut the last samples."""
    while jitter.level and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    latency = getattr(stream, "latency", 0.0)
    if isinstance(latency, tuple | list):  # duplex streams: (input, output)
        latency = latency[-1]
    await asyncio.sleep(float(latency or 0.0) + 2 * block / device_rate)


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
    token: str | None = None,
    ssl: SSLContext | None = None,
    resume: bool = False,
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
    jitter = playback_buffer(jitter_ms, device_rate, block)
    client = await Client.connect(
        url,
        mode=mode,
        room=room,
        sample_rate=rate,
        latency=latency,
        bandwidth=bandwidth,
        token=token,
        ssl=ssl,
        resume=resume,
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
        with factory(**kwargs) as stream_:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.wait(
                        {asyncio.ensure_future(stop.wait()), receiver}, return_when=asyncio.FIRST_COMPLETED
                    )
            blocks.put_nowait(None)
            await sender
            await receiver
            if duplex:  # let the jitter buffer, then the device, play out what came back
                await play_out(jitter, stream_, device_rate, block, deadline=t0 + (seconds or 0) + 10)
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
            f", jitter buffer {jitter_ms:g} ms minimum (included above; adaptive, up to "
            f"{1000 * jitter.max_target_seen / device_rate:.0f} ms), {jitter.underruns} underruns, "
            f"{1000 * jitter.skipped / device_rate:.0f} ms skipped to catch up"
            if duplex
            else ""
        )
        + (f", audio status: {sorted(set(status_flags))}" if status_flags else ""),
    )
    return MicReport(text, done, jitter.underruns, jitter.played, jitter.dropped + jitter.skipped)


async def play_room(
    url: str,
    room: str,
    *,
    output_device: Any = None,
    device_rate: int | None = None,
    jitter_ms: float = 120.0,
    stop: asyncio.Event | None = None,
    stream_factory: Callable[[str], Callable[..., Any]] = _default_stream_factory,
    token: str | None = None,
    ssl: SSLContext | None = None,
    resume: bool = False,
) -> dict:
    """Listen to a room on the speaker until the publisher ends (or `stop`)."""
    if device_rate is None:
        device_rate = device_rate_of(output_device, "output")
    rate = client_rate_for(device_rate)
    down = StreamingResampler(rate, device_rate) if rate != device_rate else None
    jitter = playback_buffer(jitter_ms, device_rate, round(0.02 * device_rate))
    client = await Client.connect(
        url, mode="listen", room=room, sample_rate=rate, want=["audio"], token=token, ssl=ssl, resume=resume
    )
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
    ) as stream_:
        receiver = asyncio.create_task(receive())
        await asyncio.wait(
            {asyncio.ensure_future(stop.wait()), receiver}, return_when=asyncio.FIRST_COMPLETED
        )
        if not stop.is_set():
            await play_out(
                jitter, stream_, device_rate, round(0.02 * device_rate), deadline=time.monotonic() + 30
            )
        receiver.cancel()
    await client.close()
    return {**done, "underruns": jitter.underruns, "skipped": jitter.skipped}
