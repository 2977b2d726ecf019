"""Shared fixtures: the test clips and a session-wide random:tiny model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def speech_clip() -> np.ndarray:
    """arctic_a0009.wav: 3.095 s of read speech, 16 kHz mono float32 (ends in a partial 320-sample frame)."""
    audio, rate = sf.read(DATA_DIR / "arctic_a0009.wav", dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    return audio


@pytest.fixture(scope="session")
def tiny_model():
    """random:tiny, loaded once per session (treat as read-only)."""
    from xcodec_stream import XcodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return XcodecModel.from_pretrained("random:tiny")
