"""Semantic key/value cache (`semantic_cache=True`): engine invariants, exactness where it is exact, and the
cache's bookkeeping against a dense block-causal transformer."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.streaming.conftest import pad_to_frames
from tests.streaming.test_encoder import stream_encode
from tests.streaming.test_slots import test_encoder_rows_equal_sessions_alone
from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.random_init import calibrate, init_weights
from xcodec_stream.model.xcodec import XcodecModel
from xcodec_stream.streaming.presets import PRESETS, StreamingOptions

WINDOW = PRESETS["balanced"].with_(semantic_cache=False)  # balanced's geometry, whole window per block
CACHED = WINDOW.with_(semantic_cache=True)
VARIANTS = {
    "hubert": ("hubert", {}),
    "wavlm": ("wavlm", {}),
    "wavlm-stable": ("wavlm", {"do_stable_layer_norm": True, "feat_extract_norm": "layer"}),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_model(request) -> XcodecModel:
    """random:tiny's recipe with each transformer variant: HuBERT post-LN, WavLM post-LN, WavLM pre-LN."""
    kind, overrides = VARIANTS[request.param]
    config = XcodecConfig.tiny(kind)
    config.semantic_model_config = dataclasses.replace(config.semantic_model_config, **overrides)
    model = XcodecModel(config)
    gen = torch.Generator().manual_seed(0)
    init_weights(model, gen)
    calibrate(model, gen)
    return model.eval()


@pytest.fixture(scope="module")
def cached_one_chunk(tiny_model, speech) -> torch.Tensor:
    return stream_encode(tiny_model.streaming_encoder(latency=CACHED), speech, [])


@pytest.mark.parametrize("chunk", [1, 319, 321, 4800])
def test_cached_codes_do_not_depend_on_chunk_size(tiny_model, speech, cached_one_chunk, chunk):
    enc = tiny_model.streaming_encoder(latency=CACHED)
    before = enc.bank.nbytes()
    assert torch.equal(stream_encode(enc, speech, [chunk]), cached_one_chunk)
    assert enc.bank.nbytes() == before  # fixed capacity


def test_cached_rows_equal_sessions_alone(tiny_model, speech):
    test_encoder_rows_equal_sessions_alone(tiny_model, speech, CACHED)


def _semantic_latents(model, x: torch.Tensor, opts: StreamingOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and the semantic-encoder latents of the whole clip (one step + flush)."""
    enc = model.streaming_encoder(latency=opts)
    lats: list[torch.Tensor] = []
    original = enc.semantic.step

    def record(*args):
        lats.append(original(*args))
        return lats[-1]

    enc.semantic.step = record
    codes = torch.cat([enc.step(x), enc.flush()], dim=-1)
    s = enc.semantic.lookahead  # the first step's latents start at frame -S
    return codes, torch.cat(lats, dim=-1)[0, :, s : s + codes.shape[-1]]


def test_first_block_equals_the_window(variant_model, speech):
    """One block covering the clip: there is nothing cached yet (the left context lies before the start),
    so the cached path (new frames only, positional conv over the window) equals the window exactly."""
    frames = -(-speech.shape[1] // 320)
    opts = StreamingOptions(semantic_block=frames, semantic_left_context=10, semantic_lookahead=0)
    codes, lat = _semantic_latents(variant_model, speech, opts)
    codes_c, lat_c = _semantic_latents(variant_model, speech, opts.with_(semantic_cache=True))
    torch.testing.assert_close(lat_c, lat, atol=1e-4, rtol=1e-4)  # float32 rounding only
    assert torch.equal(codes_c, codes)


def test_cached_differs_from_the_window_but_stays_close(tiny_model, speech):
    """Several blocks: the cached context is approximate (earlier blocks' representations), not the window."""
    _, lat = _semantic_latents(tiny_model, speech, WINDOW)
    _, lat_c = _semantic_latents(tiny_model, speech, CACHED)
    diff = (lat_c - lat).abs().max().item()
    assert 0 < diff < 0.05 * lat.abs().max().item(), diff


def _block_causal_reference(sm, h: torch.Tensor, block: int, left: int) -> torch.Tensor:
    """Dense transformer over the whole sequence (1, T, H) of layer-0 inputs: frame t of block b attends to
    frames [b*block - left, (b+1)*block). Returns the mean of all hidden states."""
    enc = sm.encoder
    t = h.shape[1]
    q_blk = torch.arange(t)[:, None] // block
    k = torch.arange(t)[None, :]
    allowed = (k < (q_blk + 1) * block) & (k >= q_blk * block - left)
    neg = torch.zeros(t, t).masked_fill(~allowed, float("-inf"))
    bias = enc.position_bias(t)
    hidden = [h]
    for layer in enc.layers:
        att = layer.attention
        a_in = layer.layer_norm(h) if layer.stable_layer_norm else h

        def heads(x, att=att):
            return x.view(1, t, att.num_heads, att.head_dim).transpose(1, 2)

        mask = neg if bias is None else att.gate(a_in, bias) + neg
        out = F.scaled_dot_product_attention(
            heads(att.q_proj(a_in)), heads(att.k_proj(a_in)), heads(att.v_proj(a_in)), mask, scale=att.scaling
        )
        a = att.out_proj(out.transpose(1, 2).reshape(1, t, -1))
        if layer.stable_layer_norm:
            h = h + a
            h = h + layer.feed_forward(layer.final_layer_norm(h))
        else:
            h = layer.layer_norm(h + a)
            h = layer.final_layer_norm(h + layer.feed_forward(h))
        hidden.append(h)
    return torch.stack(hidden, dim=1).mean(dim=1)


def test_cache_equals_a_block_causal_transformer(variant_model, speech):
    """Without lookahead, every cached frame keeps what it computed as a block frame: the engine's blocks are
    a dense transformer with a banded block-causal mask over the same layer-0 inputs (checks the commit and
    shift of the cache, the masks before the start, and WavLM's bias offsets). Chunks of 3 frames: a step
    of 4 frames runs in 0 or 1 call per chunk."""
    block, left = 4, 6
    opts = StreamingOptions(semantic_block=block, semantic_left_context=left, semantic_lookahead=0)
    enc = variant_model.streaming_encoder(latency=opts.with_(semantic_cache=True))
    sem = enc.semantic
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = sem.cached_hidden

    def record(h, valid, kv):
        out = original(h, valid, kv)
        calls.append((h, out[0]))
        return out

    sem.cached_hidden = record
    stream_encode(enc, speech, [3 * 320])
    # a single row: every call is one block, in order (blocks that reach past the end: dropped)
    keep = speech.shape[1] // 320 // block * block
    h0 = torch.cat([h for h, _ in calls], dim=1)[:, :keep]
    got = torch.cat([o for _, o in calls], dim=1)[:, :keep]
    with torch.inference_mode():
        ref = _block_causal_reference(variant_model.semantic_model, h0, block, left)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_cost_counts_the_query_frames(tiny_model):
    sem = tiny_model.streaming_encoder(latency=CACHED).semantic
    assert sem.frames_per_block / sem.block == (4 + 3) / 4
    sem = tiny_model.streaming_encoder(latency=WINDOW).semantic
    assert sem.frames_per_block / sem.block == (50 + 4 + 3) / 4


def test_cache_option_is_validated():
    with pytest.raises(ValueError, match="semantic_cache must be a bool"):
        StreamingOptions(semantic_cache=1)
    assert StreamingOptions().semantic_cache is False


def test_offline_agreement_with_a_context_covering_the_clip(variant_model, speech):
    """Left context and lookahead covering the clip, several blocks: the cache's first block equals the
    window, later blocks see earlier ones only through their block-time representations, so codes may
    differ from offline, but the latents stay close (measured, not exact)."""
    frames = -(-speech.shape[1] // 320)
    opts = StreamingOptions(semantic_block=8, semantic_left_context=frames, semantic_lookahead=frames)
    codes, lat = _semantic_latents(variant_model, speech, opts)
    codes_c, lat_c = _semantic_latents(variant_model, speech, opts.with_(semantic_cache=True))
    ref = variant_model.encode(pad_to_frames(speech)[:, None]).audio_codes
    first = 8  # the first block: no cache, lookahead covers the rest -> same as the window
    torch.testing.assert_close(lat_c[..., :first], lat[..., :first], atol=1e-4, rtol=1e-4)
    agree = (codes_c == ref).float().mean().item()
    assert agree >= 0.5, agree
