"""A fake codec with the streaming engine's interface: deterministic, instant, with real lookahead and flush."""

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
    return np.stack([(base * (q + 1) + 37 * q + 5_000_000) % 1024 for q in range(n_q)])


def fake_audio(codes: np.ndarray) -> np.ndarray:
    """(n_q, F) -> F * 320 samples: a function of each frame's codes alone."""
    if codes.size == 0:
        return np.zeros(0, np.float32)
    level = codes[0].astype(np.float32) / 1024.0 - 0.5
    ramp = np.linspace(0.0, 0.01, FRAME, dtype=np.float32) * codes.shape[0]
    return (level[:, None] + ramp[None, :]).reshape(-1).astype(np.float32)


class FakeEncoder:
    frame_size = FRAME
    atomic_steps = True  # a step that raises leaves every slot as it was (checked before any change)

    def __init__(self, batch_size: int, latency: str = "balanced") -> None:
        self.lookahead_frames = LOOKAHEAD[latency]
        self.latency_ms = 20.0 * (self.lookahead_frames + 1)
        self.n_q = 4
        self.batch_size = batch_size
        self.calls = 0
        self.buf = [np.zeros(0, np.float32) for _ in range(batch_size)]
        self.emitted = [0] * batch_size
        self.nq = [4] * batch_size
        self.fail_next = False
        self.oom_over: int | None = None  # raise MemoryError for steps of more slots than this

    def reset(self, slot: int) -> None:
        self.buf[slot] = np.zeros(0, np.float32)
        self.emitted[slot] = 0
        self.nq[slot] = 4

    def set_bandwidth(self, slot: int, bandwidth: float | None) -> None:
        self.nq[slot] = FakeConfig().bandwidth_to_num_quantizers(bandwidth)

    def _emit(self, slot: int, upto: int) -> np.ndarray:
        f0 = self.emitted[slot]
        upto = max(upto, f0)
        frames = self.buf[slot][f0 * FRAME : upto * FRAME].reshape(-1, FRAME)
        self.emitted[slot] = upto
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
    def __init__(self, batch_size: int, latency: str = "balanced") -> None:
        self.lookahead_frames = LOOKAHEAD[latency]
        self.latency_ms = 20.0 * self.lookahead_frames
        self.codes = [np.zeros((0, 0), np.int64) for _ in range(batch_size)]
        self.emitted = [0] * batch_size

    def reset(self, slot: int) -> None:
        self.codes[slot] = np.zeros((0, 0), np.int64)
        self.emitted[slot] = 0

    def _emit(self, slot: int, upto: int) -> np.ndarray:
        f0 = self.emitted[slot]
        upto = max(upto, f0)
        self.emitted[slot] = upto
        return fake_audio(self.codes[slot][:, f0:upto])

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
        self, batch_size: int, bandwidth: float | None = None, latency: str = "balanced"
    ) -> FakeEncoder:
        enc = FakeEncoder(batch_size, latency)
        self.encoders.append(enc)
        return enc

    def streaming_decoder(self, batch_size: int, latency: str = "balanced") -> FakeDecoder:
        return FakeDecoder(batch_size, latency)


def local_run(
    model,
    chunks16: list[np.ndarray],
    *,
    latency: str = "balanced",
    bandwidth=None,
    decode: bool = True,
    capacity: int = 1,
    slot: int = 0,
):
    """The engine driven directly, one chunk per step, then the flush in a step of its own (what the server
    does with max_chunks_per_step=1): codes (n_q, F) and audio truncated to the input length."""
    enc = model.streaming_encoder(batch_size=capacity, latency=latency)
    dec = model.streaming_decoder(batch_size=capacity, latency=latency)
    enc.reset(slot)
    enc.set_bandwidth(slot, bandwidth)
    dec.reset(slot)
    codes, audio = [], []
    for chunk in [*chunks16, None]:
        c = enc.step_slots({slot: chunk})[slot] if chunk is not None else enc.flush_slots([slot])[slot]
        c = np.asarray(c)
        codes.append(c)
        if decode:
            if c.shape[-1]:
                audio.append(np.asarray(dec.step_slots({slot: c})[slot]).reshape(-1))
            if chunk is None:
                audio.append(np.asarray(dec.flush_slots([slot])[slot]).reshape(-1))
    n = sum(x.size for x in chunks16)
    return np.concatenate(codes, axis=-1), (np.concatenate(audio)[:n] if decode else None)


def local_decode(
    model, code_chunks: list[np.ndarray], *, latency: str = "balanced", capacity: int = 1, slot: int = 0
):
    """The streaming decoder driven directly: one step per chunk, then the flush."""
    dec = model.streaming_decoder(batch_size=capacity, latency=latency)
    dec.reset(slot)
    out = [np.asarray(dec.step_slots({slot: c})[slot]).reshape(-1) for c in code_chunks if c.shape[-1]]
    out.append(np.asarray(dec.flush_slots([slot])[slot]).reshape(-1))
    return np.concatenate(out)
