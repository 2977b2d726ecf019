"""Opus (libopus through opuslib) as a reference codec: 16 kHz mono, VOIP application, one bitrate per call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000
FRAME = 320  # 20 ms, the usual VOIP packet and the codec's own frame


def unavailable() -> str | None:
    """Why Opus cannot run here (opuslib missing, or libopus not loadable), or None when it can."""
    try:
        import opuslib  # noqa: F401  (loads libopus with ctypes at import)
    except Exception as exc:  # opuslib raises a bare Exception when it cannot find libopus
        return f"opuslib cannot load libopus ({type(exc).__name__}: {exc})"
    return None


def version() -> str:
    from opuslib.api.info import get_version_string

    v = get_version_string()
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class OpusResult:
    audio: np.ndarray  # float32, aligned with the input and of its length
    kbps: float  # what the encoder actually sent: packet bytes over the encoded duration
    lookahead: int  # encoder delay in samples (OPUS_GET_LOOKAHEAD), removed from `audio`


def round_trip(audio: np.ndarray, kbps: float) -> OpusResult:
    """Encode (n,) float32 16 kHz audio at `kbps` in 20 ms packets and decode it, delay removed."""
    import opuslib

    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = int(round(kbps * 1000))
    dec = opuslib.Decoder(RATE, 1)
    lookahead = enc.lookahead
    n = audio.shape[0]
    # the decoder's output lags the input by the lookahead: encode that many zeros more, then drop them
    total = -(-(n + lookahead) // FRAME) * FRAME
    x = np.zeros(total, np.float32)
    x[:n] = audio
    out, sent = [], 0
    for i in range(0, total, FRAME):
        packet = enc.encode_float(x[i : i + FRAME].tobytes(), FRAME)
        sent += len(packet)
        out.append(np.frombuffer(dec.decode_float(packet, FRAME), np.float32))
    y = np.concatenate(out)[lookahead : lookahead + n]
    return OpusResult(audio=y, kbps=8 * sent / (total / RATE) / 1000, lookahead=lookahead)
