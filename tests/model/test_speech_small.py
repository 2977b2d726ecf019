"""The built-in checkpoint (checkpoints/speech-small): within its size budget, loaded strictly by our
loader and by transformers with identical codes, the shape of the training recipe, and it makes speech."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from xcodec_stream import XcodecFeatureExtractor, XcodecModel
from xcodec_stream.training.recipe import speech_small_config

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "speech-small"


@pytest.fixture(scope="module")
def model() -> XcodecModel:
    return XcodecModel.from_pretrained(CHECKPOINT)  # strict: every key and shape or an error


def test_the_checkpoint_is_in_the_repository_within_budget():
    names = {p.name for p in CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert sum(p.stat().st_size for p in CHECKPOINT.rglob("*") if p.is_file()) <= 20_000_000


def test_config_is_the_training_recipe(model):
    assert model.config.to_dict() == speech_small_config().to_dict()
    extractor = XcodecFeatureExtractor.from_pretrained(CHECKPOINT)
    assert extractor.sampling_rate == 16000 and extractor.hop_length == 320


def test_transformers_reads_the_same_codes(model, speech_clip):
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fc1 / decoder_semantic (training-only heads) are not shipped
        tm = transformers.XcodecModel.from_pretrained(CHECKPOINT).eval()
    x = torch.from_numpy(speech_clip)[None, None]
    with torch.inference_mode():
        for bandwidth in model.config.target_bandwidths:
            codes = model.encode(x, bandwidth).audio_codes
            assert torch.equal(tm.encode(x, bandwidth=bandwidth).audio_codes, codes), bandwidth
        audio = model.decode(codes).audio_values
        assert (tm.decode(codes).audio_values - audio).abs().max() < 1e-4


def test_it_makes_speech(model, speech_clip):
    """Intelligible speech comes back at every bandwidth: STOI well above what random weights give (about
    0.5 for random:tiny, 0.42 for noise) and a floor under the model card's figures, so that a broken export,
    loader or config fails here. (The bandwidths score alike: the card says why.)"""
    pystoi = pytest.importorskip("pystoi", reason="pystoi is in the test extras")
    x = torch.from_numpy(speech_clip)[None, None]
    for bandwidth in (0.5, 4):
        y = model(x, bandwidth=bandwidth).audio_values[0, 0].numpy()
        score = pystoi.stoi(speech_clip, y, 16000)
        assert score >= 0.6, (bandwidth, score)
