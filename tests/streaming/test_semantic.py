"""Semantic branch: what is exact (conv features without GroupNorm, masked windows, the semantic encoder)
and the causal GroupNorm statistics, checked against direct computations."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.streaming.conftest import pad_to_frames
from tests.streaming.helpers import run_graph
from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.random_init import calibrate, init_weights
from xcodec_stream.model.xcodec import XcodecModel
from xcodec_stream.streaming.presets import StreamingOptions
from xcodec_stream.streaming.semantic import feature_graph


@pytest.fixture(scope="module")
def layer_norm_model() -> XcodecModel:
    """random:tiny's recipe with LayerNorm in every conv feature layer (HuBERT-large style): no GroupNorm."""
    config = XcodecConfig.tiny()
    config.semantic_model_config = dataclasses.replace(
        config.semantic_model_config, feat_extract_norm="layer"
    )
    model = XcodecModel(config)
    gen = torch.Generator().manual_seed(0)
    init_weights(model, gen)
    calibrate(model, gen)
    return model.eval()


def test_conv_features_stream_exactly_without_group_norm(layer_norm_model, speech):
    fe = layer_norm_model.semantic_model.feature_extractor
    graph = feature_graph(fe, 160, 320)
    assert graph.delay == 0  # feature j is out once frame j is in
    x = pad_to_frames(speech)[:, None]
    with torch.no_grad():
        ref = fe(F.pad(x, (160, 160)))
        for chunks in ([1] * 5, [3, 0, 17]):
            torch.testing.assert_close(run_graph(graph, x, chunks), ref, atol=1e-5, rtol=1e-5)


def test_group_norm_uses_the_statistics_of_the_stream_so_far(tiny_model, speech):
    """Every conv0 output is normalised with the mean/variance of all outputs up to it (padding included)."""
    fe = tiny_model.semantic_model.feature_extractor
    x = pad_to_frames(speech)[:, None]
    with torch.no_grad():
        h = fe.conv_layers[0].conv(F.pad(x, (160, 160))).double()
        n = torch.arange(1, h.shape[-1] + 1, dtype=torch.float64)
        mean = h.cumsum(-1) / n
        var = (h * h).cumsum(-1) / n - mean * mean
        norm = fe.conv_layers[0].layer_norm
        y = ((h - mean) / torch.sqrt(var + norm.eps)).float() * norm.weight[:, None] + norm.bias[:, None]
        y = fe.conv_layers[0].activation(y)
        for layer in fe.conv_layers[1:]:
            y = layer(y)
        got = run_graph(feature_graph(fe, 160, 320), x, [2, 5, 1, 11])
    torch.testing.assert_close(got, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["hubert", "wavlm"])
def test_masked_window_equals_the_trimmed_window(variant):
    """Frames outside the signal are masked: the valid part equals running on the valid frames alone."""
    config = XcodecConfig.tiny(variant).semantic_model_config
    from xcodec_stream.model.semantic import SemanticModel

    sm = SemanticModel(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in sm.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        feats = torch.randn(2, 30, config.conv_dim[-1])
        valid = torch.zeros(2, 30, dtype=torch.bool)
        valid[0, 7:] = True  # window reaching before the start
        valid[1, :19] = True  # window reaching past the end
        hidden = sm.encoder(sm.feature_projection(feats), key_mask=valid)
        for row, (a, b) in enumerate([(7, 30), (0, 19)]):
            alone = sm.encoder(sm.feature_projection(feats[row : row + 1, a:b]))
            for h, ref in zip(hidden, alone, strict=True):
                torch.testing.assert_close(h[row, a:b], ref[0], atol=1e-5, rtol=1e-5)


def test_whole_signal_window_gives_offline_codes(layer_norm_model, speech):
    """With no GroupNorm and a window wider than the clip, every part of the encoder is exact: codes equal
    offline (this checks windows, masks, block scheduling, the semantic encoder stream and the join)."""
    x = pad_to_frames(speech)
    frames = x.shape[1] // 320
    opts = StreamingOptions(semantic_block=6, semantic_left_context=frames, semantic_lookahead=frames)
    enc = layer_norm_model.streaming_encoder(latency=opts)
    codes = torch.cat([enc.step(speech[:, :7000]), enc.step(speech[:, 7000:]), enc.flush()], dim=-1)
    ref = layer_norm_model.encode(x[:, None]).audio_codes
    assert codes.shape == ref.shape
    agree = (codes == ref).float().mean().item()
    assert agree >= 0.99, agree  # float32 rounding (masked vs trimmed attention) may flip a rare near-tie


def test_semantic_window_sizes_change_agreement_gracefully(tiny_model, speech):
    """Measured, not exact: a wider window agrees at least as well with offline on the first quantizer."""
    ref = tiny_model.encode(pad_to_frames(speech)[:, None]).audio_codes

    def agreement(opts: StreamingOptions) -> float:
        enc = tiny_model.streaming_encoder(latency=opts)
        codes = torch.cat([enc.step(speech), enc.flush()], dim=-1)
        return (codes[:, 0] == ref[:, 0]).float().mean().item()

    narrow = agreement(StreamingOptions(semantic_block=2, semantic_left_context=4, semantic_lookahead=1))
    wide = agreement(StreamingOptions(semantic_block=8, semantic_left_context=80, semantic_lookahead=20))
    assert wide >= narrow - 0.05 and wide >= 0.7, (narrow, wide)


def test_speculative_blocks_equal_offline_on_the_signal_so_far(layer_norm_model, speech):
    """Less lookahead than exact: the step that ends at P frames (a multiple of the step K) brings out the
    acoustic latents of frames P - K - A .. P - A - 1 and the semantic latents of P - K - S .. P - S - 1, each
    from offline parts run on the signal cut at P, the rest taken as ended. Checked where every other part
    is exact (no GroupNorm, left context wider than the clip, semantic lookahead covering the semantic
    encoder's 7 frames: below that, its left context comes from earlier windows, each cut at its own point,
    which no single offline run reproduces)."""
    model = layer_norm_model
    block, ahead_a, ahead_s = 3, 4, 7
    x = pad_to_frames(speech)
    frames = x.shape[1] // 320
    opts = StreamingOptions(
        acoustic_lookahead=ahead_a,
        semantic_block=block,
        semantic_left_context=frames,
        semantic_lookahead=ahead_s,
    )
    enc = model.streaming_encoder(latency=opts)
    assert enc.speculative and enc.lookahead_frames == block - 1 + max(ahead_a, ahead_s)
    codes = torch.cat([enc.step(speech[:, :5000]), enc.step(speech[:, 5000:]), enc.flush()], dim=-1)
    ac = torch.zeros(1, model.acoustic_encoder.conv2.out_channels, frames)
    sem = torch.zeros(1, model.encoder_semantic.out_channels, frames)
    with torch.inference_mode():
        for p in range(block, frames + ahead_s + block, block):
            cut = min(p, frames) * 320
            span_a = slice(max(0, p - block - ahead_a), max(0, min(p - ahead_a, frames)))
            span_s = slice(max(0, p - block - ahead_s), max(0, min(p - ahead_s, frames)))
            ac[..., span_a] = model.acoustic_encoder(x[None, :, :cut])[..., span_a]
            feats = model.semantic_features(F.pad(x[:, :cut], (160, 160)))
            sem[..., span_s] = model.encode_semantic(feats)[..., span_s]
        expected = model.quantize(model.encode_latent(ac, sem), 8)
    agree = (codes == expected).float().mean().item()
    assert agree >= 0.99, agree  # float32 rounding may flip a rare near-tie
