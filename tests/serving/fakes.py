"""The fake codec (xcodec_stream.serving.fake_codec) and helpers that drive an engine directly, as the server
would: the reference the serving tests compare the daemon's output with."""

from __future__ import annotations

import numpy as np

from xcodec_stream.serving.fake_codec import (  # noqa: F401  (re-exported for the tests)
    FRAME,
    LOOKAHEAD,
    FakeConfig,
    FakeDecoder,
    FakeEncoder,
    FakeModel,
    fake_audio,
    fake_codes,
)


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
