"""Runs `xcodec-stream client ...` with a tap on sounddevice's full-duplex stream, for the PulseAudio test.

Usage: python mic_tap.py PREFIX client --mic ...  The client runs unchanged; every audio callback's input
(what the client captured) and output (what it handed to the speaker) are kept and saved as PREFIX.in.npy and
PREFIX.out.npy when it exits, and PREFIX.started appears at the first callback. With them the test checks
the audio path sample by sample instead of guessing where the client started listening.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(prefix: str, argv: list[str]) -> int:
    import sounddevice as sd

    from xcodec_stream.cli.main import main as cli_main

    captured: list[np.ndarray] = []
    played: list[np.ndarray] = []
    started = Path(prefix + ".started")
    real_stream = sd.Stream

    class TappedStream(real_stream):  # type: ignore[misc, valid-type]
        def __init__(self, *args, callback, **kwargs) -> None:
            def tapped(indata, outdata, frames, time, status) -> None:
                callback(indata, outdata, frames, time, status)
                captured.append(indata[:, 0].copy())
                played.append(outdata[:, 0].copy())
                if len(captured) == 1:
                    started.touch()

            super().__init__(*args, callback=tapped, **kwargs)

    sd.Stream = TappedStream  # mic.py looks sd.Stream up when it opens the stream
    try:
        return cli_main(argv)
    finally:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.float32)  # noqa: E731
        np.save(prefix + ".in.npy", cat(captured))
        np.save(prefix + ".out.npy", cat(played))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
