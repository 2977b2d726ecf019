"""The full default config (random:full) on real speech: what tiny cannot prove (real sizes, real receptive
fields with full channel counts, float32 accumulation over wide layers)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.streaming.conftest import pad_to_frames
from tests.streaming.helpers import run_graph
from tests.streaming.test_decoder import stream_decode
from tests.streaming.test_encoder import stream_encode

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_model():
    from xcodec_stream import XcodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return XcodecModel.from_pretrained("random:full")


@pytest.fixture(scope="module")
def clip(speech_clip) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(speech_clip[8000:40_100]))[
        None
    ]  # 2 s of speech, partial frame


def test_full_exact_decoder_equals_offline_on_real_codes(full_model, clip):
    codes = full_model.encode(pad_to_frames(clip)[:, None]).audio_codes
    ref = full_model.decode(codes).audio_values[:, 0]
    for chunks in ([1, 0, 3], [7, 2, 11]):
        out = stream_decode(full_model.streaming_decoder(latency="exact"), codes, chunks)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-5


def test_full_exact_acoustic_latent_equals_offline(full_model, clip):
    x = pad_to_frames(clip)[:, None]
    enc = full_model.streaming_encoder(latency="exact")
    with torch.inference_mode():
        ref = full_model.encode_acoustic(x, num_frames=x.shape[-1] // 320)
        lat = run_graph(enc.acoustic, x, [1, 5, 2])
    assert (lat - ref).abs().max() <= 1e-5 * float(ref.abs().max())


def test_full_balanced_codes_do_not_depend_on_chunking(full_model, clip):
    a = stream_encode(full_model.streaming_encoder(latency="balanced"), clip, [])
    b = stream_encode(full_model.streaming_encoder(latency="balanced"), clip, [640, 319, 4800])
    assert a.shape == (1, 8, -(-clip.shape[1] // 320))
    assert torch.equal(a, b)
