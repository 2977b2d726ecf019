"""random:* models: seeded, loud, and realistic enough that codes carry information."""

from __future__ import annotations

import warnings

import pytest
import torch

from xcodec_stream import XcodecModel
from xcodec_stream.model.random_init import RandomWeightsWarning, calibration_signal


def test_deterministic_and_loud(tiny_model):
    with pytest.warns(RandomWeightsWarning, match="random weights: audio will not be speech"):
        again = XcodecModel.from_pretrained("random:tiny")
    a, b = tiny_model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        XcodecModel.from_pretrained("random:tiny")
    assert torch.equal(torch.rand(3), expected)


def test_codes_vary_and_every_quantizer_is_used(tiny_model, speech_clip):
    x = torch.from_numpy(speech_clip)[None, None]
    codes = tiny_model.encode(x).audio_codes[0]
    assert codes.shape == (8, 155)
    distinct = [len(torch.unique(codes[q])) for q in range(8)]
    assert min(distinct) >= 15, distinct
    assert distinct[0] >= 60, distinct
    changes = (codes[:, 1:] != codes[:, :-1]).float().mean(dim=1)
    assert float(changes.min()) > 0.3, changes  # codes change from frame to frame in every quantizer


def test_both_branches_matter(tiny_model, speech_clip):
    """Neither half of fc's input dominates: zeroing either one changes most codes."""
    x = torch.from_numpy(speech_clip)[None, None]
    codes = tiny_model.encode(x).audio_codes
    with torch.inference_mode():
        e_sem = tiny_model.encode_semantic(
            tiny_model.semantic_features(torch.nn.functional.pad(x[:, 0], (160, 160)))
        )
        e_ac = tiny_model.encode_acoustic(x, num_frames=e_sem.shape[2])
        ratio = float(e_ac.pow(2).mean().sqrt() / e_sem.pow(2).mean().sqrt())
        assert 0.2 < ratio < 5, ratio
        for keep_ac, keep_sem in ((0.0, 1.0), (1.0, 0.0)):
            emb = tiny_model.encode_latent(e_ac * keep_ac, e_sem * keep_sem)
            other = tiny_model.quantize(emb, 8)
            assert float((other[:, 0] == codes[:, 0]).float().mean()) < 0.5


def test_output_level_is_sane(tiny_model, speech_clip):
    out = tiny_model(torch.from_numpy(speech_clip)[None, None]).audio_values
    rms = float(out.pow(2).mean().sqrt())
    assert 0.02 < rms < 0.5, rms
    assert torch.isfinite(out).all()


def test_calibration_signal_is_deterministic_speech_like():
    a, b = calibration_signal(2.0), calibration_signal(2.0)
    assert (a == b).all() and a.shape == (32000,) and abs(a).max() == pytest.approx(0.5)


def test_unknown_random_name():
    with pytest.raises(ValueError, match=r"unknown random model 'random:huge'.*random:tiny"):
        XcodecModel.from_pretrained("random:huge")


def test_outputs_read_like_model_output(tiny_model):
    x = torch.zeros(1, 1, 3200)
    enc = tiny_model.encode(x)
    assert enc[0] is enc.audio_codes is enc["audio_codes"]
    out = tiny_model(x)
    codes, audio = out
    assert codes is out.audio_codes and audio.shape == x.shape
