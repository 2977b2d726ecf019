"""The .npz codes format: round trip, validation, no pickle."""

from __future__ import annotations

import numpy as np
import pytest

from xcodec_stream.model.codes_file import CodesFile, load_codes


def _sample(**overrides) -> CodesFile:
    fields = dict(
        codes=np.arange(16, dtype=np.int64).reshape(2, 8) * 60,
        frame_rate=50,
        sample_rate=16000,
        hop_length=320,
        model_id="random:tiny",
        num_samples=2500,
        original_sample_rate=44100,
        original_num_samples=6891,
        codebook_size=1024,
        bandwidth=1.0,
    )
    fields.update(overrides)
    return CodesFile(**fields)


def test_round_trip(tmp_path):
    path = _sample().save(tmp_path / "c.npz")
    back = load_codes(path)
    assert back.codes.dtype == np.uint16 and back.codes.shape == (2, 8)
    assert (back.codes == _sample().codes).all()
    assert (back.n_q, back.num_frames, back.model_id, back.bandwidth) == (2, 8, "random:tiny", 1.0)
    assert (back.original_sample_rate, back.original_num_samples, back.num_samples) == (44100, 6891, 2500)
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert set(data.files) >= {
            "codes",
            "n_q",
            "frame_rate",
            "sample_rate",
            "hop_length",
            "model_id",
            "num_samples",
            "original_sample_rate",
            "format_version",
        }


def test_name_kept_as_given(tmp_path):
    _sample().save(tmp_path / "codes.bin")
    assert (tmp_path / "codes.bin").is_file()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="codes file not found"):
        load_codes(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a codes file"):
        load_codes(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an xcodec-stream codes file"):
        load_codes(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="codes must be in 0..1023"):
        _sample(codes=np.full((1, 4), 1024)).save(tmp_path / "x.npz")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_q", np.array(3, dtype=np.int64), "has 2 rows but n_q is 3"),
        ("format_version", np.array(9, dtype=np.int64), "format_version 9 is not supported"),
        ("codes", np.zeros((2, 8), dtype=np.int32), "must be a uint16 array"),
        ("codes", np.full((2, 8), 2000, dtype=np.uint16), "out of range"),
        ("num_samples", np.array(10**6, dtype=np.int64), "num_samples"),
        ("hop_length", np.array(1.5), "'hop_length' must be an integer"),
    ],
)
def test_validation(tmp_path, field, value, message):
    path = _sample().save(tmp_path / "c.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[field] = value
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=message):
        load_codes(path)
