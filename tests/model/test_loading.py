"""Loading is strict: every kind of bad checkpoint is an error that names the culprit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from xcodec_stream import XcodecModel
from xcodec_stream.model.loading import IGNORED_KEYS, CheckpointError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    """A valid tiny checkpoint in transformers' format (written by our save_pretrained)."""
    directory = tmp_path_factory.mktemp("ckpt")
    tiny_model.save_pretrained(directory)
    return directory


def _copy(checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoint, target)
    return target


def _edit_weights(directory, edit):
    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_valid_checkpoint_loads_identically(checkpoint, tiny_model):
    model = XcodecModel.from_pretrained(checkpoint)
    for key, value in tiny_model.state_dict().items():
        if "pos_conv_embed.conv.weight" in key:  # stored as a weight-norm pair: refolded to within rounding
            torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(model.state_dict()[key], value), key


def test_missing_key(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    _edit_weights(d, lambda s: s.pop("acoustic_decoder.block.1.res_unit2.conv1.bias"))
    with pytest.raises(
        CheckpointError, match=r"missing keys.*acoustic_decoder\.block\.1\.res_unit2\.conv1\.bias"
    ):
        XcodecModel.from_pretrained(d)


def test_missing_codebook(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    _edit_weights(d, lambda s: s.pop("quantizer.quantizers.5.codebook.embed"))
    with pytest.raises(CheckpointError, match=r"missing keys.*quantizer\.quantizers\.5\.codebook\.embed"):
        XcodecModel.from_pretrained(d)


def test_unexpected_key(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    _edit_weights(d, lambda s: s.__setitem__("semantic_model.encoder.extra_head.weight", torch.zeros(3)))
    with pytest.raises(
        CheckpointError, match=r"unexpected keys.*semantic_model\.encoder\.extra_head\.weight"
    ):
        XcodecModel.from_pretrained(d)


def test_unexpected_codebook(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    _edit_weights(d, lambda s: s.__setitem__("quantizer.quantizers.8.codebook.embed", torch.zeros(1024, 48)))
    with pytest.raises(CheckpointError, match=r"unexpected keys.*quantizer\.quantizers\.8\.codebook\.embed"):
        XcodecModel.from_pretrained(d)


def test_wrong_shape(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    _edit_weights(d, lambda s: s.__setitem__("fc2.weight", torch.zeros(16, 47)))
    with pytest.raises(CheckpointError, match=r"wrong shape.*fc2\.weight.*\(16, 47\).*\(16, 48\)"):
        XcodecModel.from_pretrained(d)


def test_weight_norm_without_partner(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    _edit_weights(
        d, lambda s: s.pop("semantic_model.encoder.pos_conv_embed.conv.parametrizations.weight.original0")
    )
    with pytest.raises(
        CheckpointError, match=r"pos_conv_embed\.conv\.parametrizations\.weight\.original1.*partner"
    ):
        XcodecModel.from_pretrained(d)


def test_garbage_weights_file(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a valid safetensors file"):
        XcodecModel.from_pretrained(d)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint directory not found: .*no-such-dir"):
        XcodecModel.from_pretrained(tmp_path / "no-such-dir")
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        XcodecModel.from_pretrained("./relative/no-such-dir")


def test_missing_weights_file_and_no_pickle(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors.*pytorch_model\.bin.*never loaded"):
        XcodecModel.from_pretrained(d)


def test_missing_config(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        XcodecModel.from_pretrained(d)


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("semantic_model_config", "whisper", "unknown semantic model_type 'whisper'"),
        ("acoustic_model_config", "encodec", "unknown acoustic model_type 'encodec'"),
        (None, "bark", "unknown model_type 'bark'"),
    ],
)
def test_unknown_model_type(checkpoint, tmp_path, where, value, message):
    d = _copy(checkpoint, tmp_path)
    config = json.loads((d / "config.json").read_text())
    (config[where] if where else config)["model_type"] = value
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        XcodecModel.from_pretrained(d)


def test_invalid_config_json(checkpoint, tmp_path):
    d = _copy(checkpoint, tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not a valid JSON config"):
        XcodecModel.from_pretrained(d)


def test_sharded_checkpoint(checkpoint, tmp_path, tiny_model):
    d = _copy(checkpoint, tmp_path)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(d / name))
        weight_map.update(dict.fromkeys(part, name))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = XcodecModel.from_pretrained(d)
    assert torch.equal(model.quantizer.embed, tiny_model.quantizer.embed)


def test_ignored_keys_are_dropped(checkpoint, tmp_path):
    """fc1, decoder_semantic, codebook training buffers, masked_spec_embed: accepted, never kept."""
    d = _copy(checkpoint, tmp_path)

    def add_training_parts(s):
        s["fc1.weight"] = torch.zeros(32, 48)
        s["decoder_semantic.conv1.weight"] = torch.zeros(32, 32, 3)
        s["semantic_model.masked_spec_embed"] = torch.zeros(32)

    _edit_weights(d, add_training_parts)
    model = XcodecModel.from_pretrained(d)
    keys = set(model.state_dict())
    assert not any(k.startswith(("fc1.", "decoder_semantic.")) or "masked_spec_embed" in k for k in keys)
    assert not any(k.endswith(("inited", "cluster_size", "embed_avg")) for k in keys)
    assert not hasattr(model, "fc1") and not hasattr(model, "decoder_semantic")
    assert len(IGNORED_KEYS) == 4


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(OSError, match=r"cannot load model 'someone/some-xcodec'.*random:full") as info:
        XcodecModel.from_pretrained("someone/some-xcodec")
    assert "\n" not in str(info.value)


def test_dtype_and_device(checkpoint):
    model = XcodecModel.from_pretrained(checkpoint, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    with pytest.raises(ValueError, match="unknown dtype"):
        XcodecModel.from_pretrained(checkpoint, dtype="int3")
