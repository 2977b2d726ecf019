"""Fixtures for the streaming tests: offline codes of real speech on random:tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model's ops are too small for intra-op threads; on a busy 2-core machine the thread
    handoffs cost more than the ops themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pad_to_frames(x: torch.Tensor, hop: int = 320) -> torch.Tensor:
    """Right-pad the last axis to whole frames: the offline reference of a flushed stream."""
    return torch.nn.functional.pad(x, (0, -x.shape[-1] % hop))


@pytest.fixture(scope="session")
def speech(speech_clip) -> torch.Tensor:
    """The first 1.5 s of the test clip (partial last frame included), (1, n) float32."""
    return torch.from_numpy(np.ascontiguousarray(speech_clip[:24_100]))[None]


@pytest.fixture(scope="session")
def tiny_codes(tiny_model, speech) -> torch.Tensor:
    """Offline codes of `speech` and of a second, different signal: (2, n_q, F)."""
    other = torch.roll(speech, 5000, dims=1) * 0.5
    x = pad_to_frames(torch.cat([speech, other]))[:, None]
    return tiny_model.encode(x).audio_codes
