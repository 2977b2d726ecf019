"""Shaping what the engines return into what sessions get: the EngineInfo answered when a stream opens, each
slot's codes and audio out of a step + flush, and each stream's StepResult (counters, truncation to the input
length, output resampling to the client's rate and format, room audio per listener, `done` after a flush)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..modes import Mode
from ..protocol import float_to_pcm
from .api import EngineInfo, StepResult
from .inputs import Take
from .stream import Listener, Stream


def n_q_for(model_config: Any, bandwidth: float | None) -> int:
    if hasattr(model_config, "bandwidth_to_num_quantizers"):
        return int(model_config.bandwidth_to_num_quantizers(bandwidth))
    return int(model_config.num_quantizers)


def stream_info(model_config: Any, enc: Any, dec: Any, st: Stream) -> EngineInfo:
    mode = st.spec.mode
    enc_ms = float(enc.latency_ms) if mode != Mode.DECODE else 0.0
    dec_ms = float(dec.latency_ms) if mode != Mode.ENCODE else 0.0
    if mode == Mode.PUBLISH:
        dec_ms = 0.0  # listeners add the decoder latency (in their own `room` message)
    if mode == Mode.LOOPBACK and not st.spec.want_audio:
        dec_ms = 0.0
    rs_ms = sum(r.latency_ms for r in (st.in_rs, st.out_rs) if r is not None)
    return EngineInfo(
        n_q=n_q_for(model_config, st.spec.bandwidth),
        latency_ms=enc_ms + dec_ms + rs_ms,
        encoder_latency_ms=enc_ms,
        decoder_latency_ms=float(dec.latency_ms),
        lookahead_frames=int(enc.lookahead_frames),
        frame_size=int(enc.frame_size),
    )


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


def _slot_output(stepped: Mapping[int, Any], flushed: Mapping[int, Any], slot: int, flat: bool) -> Any:
    """A slot's output of this tick (step, then flush) as one array (time on the last axis), None if neither.
    One part (the usual step without a flush) is not copied: the tick reads what an engine returned before
    that engine's next call, and copies what it keeps."""
    parts = [_np(p) for p in (stepped.get(slot), flushed.get(slot)) if p is not None]
    if flat:
        parts = [p.reshape(-1) for p in parts]
    if len(parts) < 2:
        return parts[0] if parts else None
    return np.concatenate(parts, axis=-1)


def slot_codes(stepped: Mapping[int, Any], flushed: Mapping[int, Any], slot: int) -> np.ndarray | None:
    """An encoder slot's codes of this tick as one (n_q, F) int64 array."""
    codes = _slot_output(stepped, flushed, slot, flat=False)
    return None if codes is None else codes.astype(np.int64, copy=False)


def slot_audio(stepped: Mapping[int, Any], flushed: Mapping[int, Any], slot: int) -> np.ndarray | None:
    """A decoder slot's 16 kHz audio of this tick as one float32 vector."""
    audio = _slot_output(stepped, flushed, slot, flat=True)
    return None if audio is None else audio.astype(np.float32, copy=False)


def finish(t: Take, codes: np.ndarray | None, r: StepResult) -> None:
    """Turn the codec output of one stream into its result: counters, truncation, output resampling."""
    st = t.stream
    mode = st.spec.mode
    audio16 = t.audio16
    if codes is not None and codes.shape[-1]:
        r.frame, r.codes = st.frames_out, codes.astype(np.uint16)
        st.frames_out += codes.shape[-1]
    if mode in (Mode.LOOPBACK, Mode.DECODE) and st.out_rs is not None:
        if audio16 is None:
            audio16 = np.zeros(0, np.float32)
        if mode == Mode.LOOPBACK:
            # the codec pads the end to a whole frame: keep exactly as many samples as went in
            audio16 = audio16[: max(0, st.n16_in - st.n16_out)]
        st.n16_out += audio16.size
        y = st.out_rs.process(audio16)
        if t.flush:
            y = np.concatenate([y, st.out_rs.flush()])
        if mode == Mode.LOOPBACK:
            y = y[: max(0, st.n_in - st.n_out)]
        if y.size:
            r.sample, r.audio = st.n_out, float_to_pcm(y, st.spec.fmt)
            st.n_out += y.size
    if t.listeners is not None:  # a room's source
        room_audio(st, audio16, t.flush, r, t.listeners)
    if t.flush:
        st.done = True
        counted = "frames_in" if mode == Mode.DECODE else "samples_in"
        r.done = {counted: st.n_in, "samples_out": st.n_out, "frames_out": st.frames_out}


def room_audio(
    st: Stream, audio16: np.ndarray | None, flush: bool, r: StepResult, listeners: dict[int, Listener]
) -> None:
    """The room decoder's audio of this tick, resampled for each listener that wants audio."""
    if audio16 is None and not flush:
        return
    if audio16 is None:
        audio16 = np.zeros(0, np.float32)
    st.room16_out += audio16.size
    for sid, lst in listeners.items():
        y = lst.resampler.process(audio16)
        if flush:
            y = np.concatenate([y, lst.resampler.flush()])
        if y.size:
            r.listeners[sid] = (lst.n_out, float_to_pcm(y, lst.fmt))
            lst.n_out += y.size
