"""XcodecFeatureExtractor behaves as transformers' DacFeatureExtractor (hop 320)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xcodec_stream import XcodecFeatureExtractor


def _reference():
    transformers = pytest.importorskip("transformers")
    return transformers.DacFeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, hop_length=320
    )


@pytest.mark.parametrize("lengths", [[16000], [16123], [5000, 16123, 320]])
def test_matches_dac_feature_extractor(lengths):
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) for n in lengths]
    raw = audio if len(audio) > 1 else audio[0]
    ours = XcodecFeatureExtractor()(raw, sampling_rate=16000, return_tensors="pt")
    ref = _reference()(raw, sampling_rate=16000, return_tensors="pt")
    assert torch.equal(ours["input_values"], ref["input_values"])
    assert torch.equal(ours["padding_mask"].long(), ref["padding_mask"].long())
    target = -(-max(lengths) // 320) * 320
    assert ours.input_values.shape == (len(lengths), 1, target)
    for i, n in enumerate(lengths):
        assert int(ours.padding_mask[i].sum()) == n
        assert torch.all(ours.input_values[i, 0, n:] == 0)


def test_no_padding_and_numpy():
    fe = XcodecFeatureExtractor()
    out = fe(np.zeros(1000, dtype=np.float64), sampling_rate=16000, padding=False, return_tensors="np")
    assert out["input_values"].shape == (1, 1, 1000) and out["input_values"].dtype == np.float32
    with pytest.raises(ValueError, match="different lengths"):
        fe([np.zeros(10), np.zeros(20)], sampling_rate=16000, padding=False, return_tensors="pt")


def test_wrong_sampling_rate():
    with pytest.raises(ValueError, match=r"44100 Hz.*needs 16000 Hz.*resample"):
        XcodecFeatureExtractor()(np.zeros(100), sampling_rate=44100)


@pytest.mark.parametrize("shape", [(2, 1000), (1000, 2)])
def test_stereo_is_an_error(shape):
    with pytest.raises(ValueError, match=r"expected mono audio.*2 channels"):
        XcodecFeatureExtractor()(np.zeros(shape), sampling_rate=16000)


def test_from_pretrained(tmp_path):
    assert XcodecFeatureExtractor.from_pretrained(tmp_path).hop_length == 320  # no file: defaults
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_extractor_type": "DacFeatureExtractor",
                "feature_size": 1,
                "hop_length": 640,
                "padding_side": "right",
                "padding_value": 0.0,
                "return_attention_mask": True,
                "sampling_rate": 16000,
            }
        )
    )
    fe = XcodecFeatureExtractor.from_pretrained(tmp_path)
    assert fe.hop_length == 640 and fe.sampling_rate == 16000
    assert XcodecFeatureExtractor.from_pretrained("random:full").sampling_rate == 16000
    fe.save_pretrained(tmp_path / "out")
    assert XcodecFeatureExtractor.from_pretrained(tmp_path / "out").hop_length == 640
