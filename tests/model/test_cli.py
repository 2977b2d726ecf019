"""`xcodec-stream encode` / `decode` on a real speech clip: same codes as the API, original length back."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from xcodec_stream import XcodecFeatureExtractor
from xcodec_stream.cli.main import main
from xcodec_stream.model.codes_file import load_codes


def _api_codes(model, wave16k: np.ndarray, bandwidth=None) -> np.ndarray:
    fe = XcodecFeatureExtractor.from_pretrained("random:tiny")
    inputs = fe(wave16k, sampling_rate=16000, return_tensors="pt")
    return model.encode(inputs["input_values"], bandwidth=bandwidth).audio_codes[0].numpy()


@pytest.mark.parametrize("bandwidth", [None, 1.5])
def test_round_trip_16k(tmp_path, data_dir, tiny_model, speech_clip, bandwidth):
    codes_path, out_path = tmp_path / "a.npz", tmp_path / "a.wav"
    extra = [] if bandwidth is None else ["--bandwidth", str(bandwidth)]
    assert (
        main(
            [
                "encode",
                str(data_dir / "arctic_a0009.wav"),
                str(codes_path),
                "--model",
                "random:tiny",
                "--quiet",
                *extra,
            ]
        )
        == 0
    )
    cf = load_codes(codes_path)
    assert np.array_equal(cf.codes.astype(np.int64), _api_codes(tiny_model, speech_clip, bandwidth))
    assert cf.n_q == (8 if bandwidth is None else 3) and cf.model_id == "random:tiny"
    assert cf.num_samples == cf.original_num_samples == len(speech_clip) and cf.original_sample_rate == 16000
    assert main(["decode", str(codes_path), str(out_path), "--quiet"]) == 0
    audio, rate = sf.read(out_path, dtype="float32")
    assert rate == 16000 and audio.shape == speech_clip.shape
    # the file holds the API's decode (16-bit rounding apart)
    codes = torch.from_numpy(_api_codes(tiny_model, speech_clip, bandwidth))[None]
    api = tiny_model.decode(codes).audio_values[0, 0, : len(speech_clip)].numpy()
    assert np.abs(audio - np.clip(api, -1, 1)).max() < 2 / 32768


def test_round_trip_44k_stereo(tmp_path, tiny_model, speech_clip):
    wave44 = AF.resample(torch.from_numpy(speech_clip), 16000, 44100).numpy()
    stereo = np.stack([wave44, 0.5 * wave44], axis=1)
    src = tmp_path / "stereo44.wav"
    sf.write(src, stereo, 44100, subtype="FLOAT")
    assert main(["encode", str(src), str(tmp_path / "s.npz"), "--model", "random:tiny", "--quiet"]) == 0
    cf = load_codes(tmp_path / "s.npz")
    mono16 = AF.resample(torch.from_numpy(stereo.mean(axis=1).astype(np.float32)), 44100, 16000).numpy()
    assert np.array_equal(cf.codes.astype(np.int64), _api_codes(tiny_model, mono16))
    assert cf.original_sample_rate == 44100 and cf.original_num_samples == len(wave44)
    assert main(["decode", str(tmp_path / "s.npz"), str(tmp_path / "s.wav"), "--quiet"]) == 0
    audio, rate = sf.read(tmp_path / "s.wav")
    assert rate == 44100 and audio.shape == (len(wave44),)
    assert (
        main(
            [
                "decode",
                str(tmp_path / "s.npz"),
                str(tmp_path / "s16.wav"),
                "--sample-rate",
                "16000",
                "--quiet",
            ]
        )
        == 0
    )
    audio16, rate16 = sf.read(tmp_path / "s16.wav")
    assert rate16 == 16000 and audio16.shape == (round(len(wave44) * 16000 / 44100),)


def test_chunked_encode_bounds_memory(tmp_path, data_dir):
    assert (
        main(
            [
                "encode",
                str(data_dir / "arctic_a0009.wav"),
                str(tmp_path / "c.npz"),
                "--model",
                "random:tiny",
                "--chunk-seconds",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert load_codes(tmp_path / "c.npz").num_frames == 155  # chunks are whole frames: same frame count


def test_errors_are_one_line(tmp_path, capsys, data_dir):
    assert (
        main(["encode", str(tmp_path / "missing.wav"), str(tmp_path / "x.npz"), "--model", "random:tiny"])
        == 1
    )
    assert "input file not found" in capsys.readouterr().err
    (tmp_path / "noise.wav").write_bytes(b"RIFF garbage")
    assert (
        main(["encode", str(tmp_path / "noise.wav"), str(tmp_path / "x.npz"), "--model", "random:tiny"]) == 1
    )
    assert "cannot read" in capsys.readouterr().err
    assert (
        main(
            [
                "encode",
                str(data_dir / "arctic_a0009.wav"),
                str(tmp_path / "x.npz"),
                "--model",
                "random:tiny",
                "--bandwidth",
                "3",
                "--quiet",
            ]
        )
        == 1
    )
    assert "unsupported bandwidth 3.0" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "missing.npz"), str(tmp_path / "x.wav")]) == 1
    assert "codes file not found" in capsys.readouterr().err


def test_default_model_offline_message(tmp_path, capsys, data_dir, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["encode", str(data_dir / "arctic_a0009.wav"), str(tmp_path / "x.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "hf-audio/xcodec-hubert-librispeech" in err and "random:full" in err and "\n" not in err
