"""A fake codec with the streaming engine's interface: deterministic, instant, with real lookahead and flush.

For the serving tests (with the codec out of the way, the daemon's behaviour is exact) and for
`xcodec-stream bench io` (the daemon's own I/O ceiling, with a codec that costs next to nothing). Each slot
keeps only the input it has not emitted yet, so a long stream costs the same per step as a short one.
It conforms to the engine Protocols of xcodec_stream.streaming.engine (tests/streaming/test_engine_protocol.py).
"""

from __future__ import annotations

import numpy as np

FRAME = 320
LOOKAHEAD = {"exact": 3, "balanced": 2, "low": 0}


class FakeConfig:
    sample_rate = 16000
    hop_length = FRAME
    frame_rate = 50
    num_quantizers = 4
    codebook_size = 1024
    target_bandwidths = (0.5, 1.0, 2.0)

    def bandwidth_to_num_quantizers(self, bandwidth: float | None = None) -> int:
        return {None: 4, 0.5: 1, 1.0: 2, 2.0: 4}[bandwidth]


def fake_codes(frames: np.ndarray, n_q: int) -> np.ndarray:
    """(F, 320) -> (n_q, F): a function of each frame alone."""
    base = np.round(frames.astype(np.float64).sum(axis=1) * 1000).astype(np.int64)
    q = np.arange(n_q, dtype=np.int64)[:, None]
    return (base[None, :] * (q + 1) + 37 * q + 5_000_000) % 1024


_RAMP = np.linspace(0.0, 0.01, FRAME, dtype=np.float32)  # made once: the fake must cost next to nothing


def fake_audio(codes: np.ndarray) -> np.ndarray:
    """(n_q, F) -> F * 320 samples: a function of each frame's codes alone."""
    if codes.size == 0:
        return np.zeros(0, np.float32)
    level = codes[0].astype(np.float32) / 1024.0 - 0.5
    ramp = _RAMP * codes.shape[0]
    return (level[:, None] + ramp[None, :]).reshape(-1).astype(np.float32)


class FakeEncoder:
    frame_size = FRAME
    step_frames = 1  # codes come out frame by frame, as soon as each frame's lookahead is in
    atomic_steps = True  # a step that raises leaves every slot as it was (checked before any change)

    def __init__(self, batch_size: int, latency: str = "balanced") -> None:
        self.lookahead_frames = LOOKAHEAD[latency]
        self.latency_ms = 20.0 * (self.lookahead_frames + 1)
        self.n_q = 4
        self.batch_size = batch_size
        self.calls = 0
        self.buf = [np.zeros(0, np.float32) for _ in range(batch_size)]  # input not emitted as codes yet
        self.emitted = [0] * batch_size  # frames emitted so far
        self.nq = [4] * batch_size
        self.fail_next = False
        self.oom_over: int | None = None  # raise MemoryError for steps of more slots than this

    def reset(self, slot: int) -> None:
        self.buf[slot] = np.zeros(0, np.float32)
        self.emitted[slot] = 0
        self.nq[slot] = 4

    def set_bandwidth(self, slot: int, bandwidth: float | None) -> None:
        self.nq[slot] = FakeConfig().bandwidth_to_num_quantizers(bandwidth)

    def lead_for(self, decoder_step: int) -> int:
        return 0  # every frame is on a one-frame step grid: no decoder needs a lead to line up with it

    def _emit(self, slot: int, n: int) -> np.ndarray:
        """The codes of the next `n` frames of buffered input (none if n <= 0)."""
        n = max(n, 0)
        frames = self.buf[slot][: n * FRAME].reshape(-1, FRAME)
        self.buf[slot] = self.buf[slot][n * FRAME :]
        self.emitted[slot] += n
        return fake_codes(frames, self.nq[slot])

    def step_slots(self, inputs: dict) -> dict:
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("injected failure")
        if self.oom_over is not None and len(inputs) > self.oom_over:
            raise MemoryError(f"injected out-of-memory: {len(inputs)} slots")
        out = {}
        for slot, pcm in inputs.items():
            self.buf[slot] = np.concatenate([self.buf[slot], np.asarray(pcm, np.float32)])
            out[slot] = self._emit(slot, self.buf[slot].size // FRAME - self.lookahead_frames)
        return out

    def flush_slots(self, slots: list) -> dict:
        out = {}
        for slot in slots:
            n = self.buf[slot].size
            pad = -n % FRAME
            self.buf[slot] = np.concatenate([self.buf[slot], np.zeros(pad, np.float32)])
            out[slot] = self._emit(slot, self.buf[slot].size // FRAME)
        return out


class FakeDecoder:
    step_frames = 1  # decodes every frame as it comes

    def __init__(self, batch_size: int, latency: str = "balanced") -> None:
        self.batch_size = batch_size
        self.lookahead_frames = LOOKAHEAD[latency]
        self.latency_ms = 20.0 * self.lookahead_frames
        self.codes = [np.zeros((0, 0), np.int64) for _ in range(batch_size)]  # codes not decoded yet
        self.emitted = [0] * batch_size  # frames decoded so far

    def reset(self, slot: int, lead: int = 0) -> None:
        if lead != 0:  # as the real decoder: 0 <= lead < step_frames
            raise ValueError(f"lead must be 0 (step_frames is 1), got {lead!r}")
        self.codes[slot] = np.zeros((0, 0), np.int64)
        self.emitted[slot] = 0

    def _emit(self, slot: int, n: int) -> np.ndarray:
        """The audio of the next `n` buffered frames (none if n <= 0)."""
        n = max(n, 0)
        codes = self.codes[slot]
        self.codes[slot] = codes[:, n:]
        self.emitted[slot] += n
        return fake_audio(codes[:, :n])

    def step_slots(self, inputs: dict) -> dict:
        out = {}
        for slot, codes in inputs.items():
            codes = np.asarray(codes, np.int64)
            have = self.codes[slot]
            self.codes[slot] = codes if have.size == 0 else np.concatenate([have, codes], axis=1)
            out[slot] = self._emit(slot, self.codes[slot].shape[1] - self.lookahead_frames)
        return out

    def flush_slots(self, slots: list) -> dict:
        return {slot: self._emit(slot, self.codes[slot].shape[1]) for slot in slots}


class FakeModel:
    """Stands in for XcodecModel: config + streaming_encoder/streaming_decoder."""

    def __init__(self) -> None:
        self.config = FakeConfig()
        self.device = "cpu"
        self.encoders: list[FakeEncoder] = []

    def streaming_encoder(
        self,
        batch_size: int = 1,
        bandwidth: float | None = None,
        latency: str = "balanced",
        compile: str | bool = "eager",  # nothing to compile: accepted as the real model's builders do
    ) -> FakeEncoder:
        enc = FakeEncoder(batch_size, latency)
        self.encoders.append(enc)
        return enc

    def streaming_decoder(
        self, batch_size: int = 1, latency: str = "balanced", compile: str | bool = "eager"
    ) -> FakeDecoder:
        return FakeDecoder(batch_size, latency)
