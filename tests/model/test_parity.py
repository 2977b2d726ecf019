"""The numeric oracle: our XcodecModel against transformers' on the same checkpoint written by transformers."""

from __future__ import annotations

import warnings

import pytest
import torch

from xcodec_stream import XcodecConfig, XcodecModel

from .reference import (
    FORMS,
    make_transformers_model,
    reference_signals,
    save_reference,
    tiny_config,
)

pytest.importorskip("transformers")

AUDIO_TOL = 1e-4


def _load(directory) -> XcodecModel:
    return XcodecModel.from_pretrained(directory)


def _compare(tm, ours: XcodecModel, x: torch.Tensor, bandwidths, forward_bandwidths=None) -> dict[str, float]:
    """Codes identical and audio within AUDIO_TOL for every bandwidth; returns the worst differences."""
    worst = {"decode": 0.0, "forward": 0.0}
    forward_bandwidths = bandwidths if forward_bandwidths is None else forward_bandwidths
    with torch.inference_mode():
        for bw in bandwidths:
            ref_codes = tm.encode(x, bandwidth=bw).audio_codes
            codes = ours.encode(x, bandwidth=bw).audio_codes
            assert codes.dtype == torch.int64
            assert (
                codes.shape
                == ref_codes.shape
                == (x.shape[0], ours.num_quantizers_for_bandwidth(bw), codes.shape[2])
            )
            assert torch.equal(codes, ref_codes), (
                f"codes differ at {bw} kbps: {(codes != ref_codes).sum()} entries"
            )
            ref_audio = tm.decode(ref_codes).audio_values
            audio = ours.decode(codes).audio_values
            assert audio.shape == ref_audio.shape == (x.shape[0], 1, 320 * codes.shape[2])
            worst["decode"] = max(worst["decode"], float((audio - ref_audio).abs().max()))
            if bw in forward_bandwidths:
                ref_out = tm(x, bandwidth=bw)
                out = ours(x, bandwidth=bw)
                assert out.audio_values.shape == ref_out.audio_values.shape == x.shape
                assert torch.equal(out.audio_codes, ref_out.audio_codes)
                worst["forward"] = max(
                    worst["forward"], float((out.audio_values - ref_out.audio_values).abs().max())
                )
    assert worst["decode"] <= AUDIO_TOL, worst
    assert worst["forward"] <= AUDIO_TOL, worst
    return worst


def _semantic_diff(tm, ours: XcodecModel, x: torch.Tensor) -> float:
    """Max abs difference of the mean hidden states (before the codes' argmin hides small differences)."""
    with torch.inference_mode():
        padded = torch.nn.functional.pad(x, (160, 160))
        ref = tm._extract_semantic_features(x)
        got = ours.semantic_features(padded)
    rel = float((ref - got).abs().max() / ref.abs().max())
    print(f"semantic features: max abs diff {float((ref - got).abs().max()):.3g} (relative {rel:.3g})")
    return rel


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("semantic", ["hubert", "wavlm"])
def test_tiny_parity(tmp_path, semantic, form):
    config = tiny_config(semantic)
    tm = make_transformers_model(config)
    save_reference(tm, tmp_path, form)
    ours = _load(tmp_path)
    for length in (16000 + 123, 5000):
        x = reference_signals(2, length)
        worst = _compare(tm, ours, x, config.target_bandwidths)
        print(
            f"{semantic}/{form}/{length}: max abs diff decode {worst['decode']:.3g} forward {worst['forward']:.3g}"
        )
    assert _semantic_diff(tm, ours, reference_signals(2, 16000 + 123)) < 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        {"do_stable_layer_norm": True, "feat_extract_norm": "layer"},
        {"feat_proj_layer_norm": False, "conv_bias": True, "num_conv_pos_embeddings": 15},
    ],
    ids=["stable-layer-norm", "no-proj-norm-odd-pos-kernel"],
)
def test_tiny_hubert_variants(tmp_path, overrides):
    """HuBERT-large-style options (not in the public checkpoints, but in the config space)."""
    config = tiny_config("hubert", **overrides)
    tm = make_transformers_model(config)
    save_reference(tm, tmp_path)
    ours = _load(tmp_path)
    _compare(tm, ours, reference_signals(2, 7000), config.target_bandwidths)
    assert _semantic_diff(tm, ours, reference_signals(2, 7000)) < 1e-5


def test_tiny_wavlm_stable_layer_norm(tmp_path):
    config = tiny_config("wavlm", do_stable_layer_norm=True, feat_extract_norm="layer")
    tm = make_transformers_model(config)
    save_reference(tm, tmp_path)
    ours = _load(tmp_path)
    _compare(tm, ours, reference_signals(2, 7000), config.target_bandwidths)


def test_our_checkpoint_loads_in_transformers(tmp_path, tiny_model):
    """save_pretrained writes what transformers reads: the same codes and audio from both."""
    import transformers

    tiny_model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = transformers.XcodecModel.from_pretrained(tmp_path).eval()
    x = reference_signals(2, 9000)
    with torch.inference_mode():
        ref = tm.encode(x).audio_codes
        codes = tiny_model.encode(x).audio_codes
        assert torch.equal(ref, codes)
        diff = (tm.decode(ref).audio_values - tiny_model.decode(codes).audio_values).abs().max()
    assert diff <= AUDIO_TOL
    # and back: our loader reads its own output
    again = XcodecModel.from_pretrained(tmp_path)
    assert torch.equal(again.encode(x).audio_codes, codes)


@pytest.mark.slow
def test_full_default_config_parity(tmp_path):
    """The default (full-size) configuration, HuBERT-base: batch of 2, 1.2 s, lengths not a multiple of 320."""
    config = XcodecConfig()
    tm = make_transformers_model(config)
    save_reference(tm, tmp_path, "parametrizations")
    ours = _load(tmp_path)
    del tm.decoder_semantic, tm.fc1  # memory
    x = reference_signals(2, 19_323)
    worst = _compare(
        tm, ours, x, config.target_bandwidths, forward_bandwidths=(config.target_bandwidths[-1],)
    )
    print(f"full: max abs diff decode {worst['decode']:.3g} forward {worst['forward']:.3g}")
    assert _semantic_diff(tm, ours, x) < 1e-5
