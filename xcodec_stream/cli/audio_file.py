"""Reading audio files for the CLI; numpy and soundfile only, so that `xcodec-stream client` needs no torch."""

from __future__ import annotations

from pathlib import Path


def read_audio(path: Path):
    """(mono float32 numpy array, sample rate, number of frames in the file)."""
    import numpy as np
    import soundfile as sf

    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"cannot read {path} as audio: {exc}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path} holds no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate), int(data.shape[0])
