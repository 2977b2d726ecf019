"""XcodecConfig reads and writes transformers' config.json; derived values equal transformers' properties."""

from __future__ import annotations

import dataclasses
import json

import pytest

from xcodec_stream import XcodecConfig
from xcodec_stream.model.config import SemanticModelConfig

transformers = pytest.importorskip("transformers")


def _without_extras(c: XcodecConfig) -> XcodecConfig:
    """The fields that define the architecture (training-only keys, kept in `extra`, left out)."""
    return dataclasses.replace(
        c,
        extra={},
        acoustic_model_config=dataclasses.replace(c.acoustic_model_config, extra={}),
        semantic_model_config=dataclasses.replace(c.semantic_model_config, extra={}),
    )


@pytest.mark.parametrize("semantic", ["hubert", "wavlm"])
@pytest.mark.parametrize("size", ["tiny", "full"])
def test_round_trip_with_transformers(tmp_path, semantic, size):
    ours = (
        XcodecConfig.tiny(semantic)
        if size == "tiny"
        else XcodecConfig(semantic_model_config={"model_type": semantic})
    )
    ours.to_json_file(tmp_path / "config.json")
    theirs = transformers.XcodecConfig.from_json_file(str(tmp_path / "config.json"))
    # transformers re-writes it; we read that back and get the same config
    (tmp_path / "t").mkdir()
    theirs.save_pretrained(tmp_path / "t")
    again = XcodecConfig.from_json_file(tmp_path / "t" / "config.json")
    assert _without_extras(again) == _without_extras(ours)
    assert again.semantic_model_config.model_type == semantic
    for name in (
        "hop_length",
        "frame_rate",
        "num_quantizers",
        "hidden_size",
        "codebook_nbits",
        "semantic_hidden_size",
    ):
        assert getattr(again, name) == getattr(theirs, name), name
    assert again.codebook_dim == theirs.codebook_dim
    assert theirs.semantic_model_config.model_type == semantic
    assert theirs.semantic_model_config.hidden_size == ours.semantic_hidden_size


def test_default_is_the_public_architecture():
    c = XcodecConfig()
    assert (c.hop_length, c.frame_rate, c.num_quantizers, c.hidden_size, c.codebook_dim) == (
        320,
        50,
        8,
        1024,
        1024,
    )
    assert c.semantic_model_config.model_type == "hubert" and c.semantic_hidden_size == 768
    assert c.acoustic_model_config.hidden_size == 256


def test_tiny_keeps_hop_and_bandwidths():
    c = XcodecConfig.tiny()
    assert c.hop_length == 320 and c.semantic_model_config.hop_length == 320
    assert c.target_bandwidths == (0.5, 1, 1.5, 2, 4) and c.num_quantizers == 8 and c.codebook_size == 1024


def test_bandwidths():
    c = XcodecConfig()
    assert [c.bandwidth_to_num_quantizers(b) for b in c.target_bandwidths] == [1, 2, 3, 4, 8]
    assert c.bandwidth_to_num_quantizers(None) == 8
    with pytest.raises(ValueError, match=r"unsupported bandwidth 3\.0 kbps.*0\.5, 1, 1\.5, 2, 4"):
        c.bandwidth_to_num_quantizers(3.0)


def test_reads_partial_and_extra_keys():
    c = XcodecConfig.from_dict(
        {
            "model_type": "xcodec",
            "transformers_version": "4.99",
            "architectures": ["XcodecModel"],
            "dtype": "float32",
            "semantic_model_config": {"model_type": "wavlm", "num_hidden_layers": 3, "tdnn_dim": [1, 2]},
        }
    )
    assert c.semantic_model_config.num_hidden_layers == 3
    assert c.semantic_model_config.extra["tdnn_dim"] == [1, 2]  # kept, written back
    assert "transformers_version" not in c.to_dict()
    assert c.to_dict()["semantic_model_config"]["tdnn_dim"] == [1, 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model_type": "encodec"}, "unknown model_type 'encodec'"),
        ({"semantic_model_config": {"model_type": "whisper"}}, "unknown semantic model_type 'whisper'"),
        ({"acoustic_model_config": {"model_type": "mimi"}}, "unknown acoustic model_type 'mimi'"),
        ({"semantic_model_config": {"feat_extract_norm": "batch"}}, "feat_extract_norm"),
    ],
)
def test_errors_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        XcodecConfig.from_dict(data)


def test_json_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        XcodecConfig.from_json_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        XcodecConfig.from_json_file(tmp_path / "bad.json")


def test_to_dict_is_json():
    json.dumps(XcodecConfig().to_dict())
    assert SemanticModelConfig(model_type="wavlm").to_dict()["num_buckets"] == 320
    assert "num_buckets" not in SemanticModelConfig().to_dict()
