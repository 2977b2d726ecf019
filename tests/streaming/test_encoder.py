"""Streaming encoder: codes independent of chunking for every preset, exact acoustic latent, lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.streaming.conftest import pad_to_frames
from tests.streaming.helpers import run_graph
from xcodec_stream.streaming.presets import PRESETS, StreamingOptions

FRAME = 320
PRESET_NAMES = list(PRESETS)


def stream_encode(enc, x: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Feed x (B, n) in chunks (cycled until the end), flush; return all codes (B, n_q, F)."""
    outs, pos, i = [], 0, 0
    while pos < x.shape[1]:
        n = chunks[i % len(chunks)] if chunks else x.shape[1]
        outs.append(enc.step(x[:, pos : pos + n]))
        pos, i = pos + n, i + 1
    outs.append(enc.flush())
    return torch.cat(outs, dim=-1)


@pytest.fixture(scope="module")
def one_chunk_codes(tiny_model, speech):
    """Codes of the whole clip given as one chunk, per preset."""
    return {p: stream_encode(tiny_model.streaming_encoder(latency=p), speech, []) for p in PRESET_NAMES}


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("chunk", [1, 319, 321, 4800])
def test_codes_do_not_depend_on_chunk_size(tiny_model, speech, one_chunk_codes, preset, chunk):
    enc = tiny_model.streaming_encoder(latency=preset)
    codes = stream_encode(enc, speech, [chunk])
    assert torch.equal(codes, one_chunk_codes[preset])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preset=st.sampled_from(PRESET_NAMES), chunks=st.lists(st.integers(0, 2000), min_size=1, max_size=8))
def test_codes_do_not_depend_on_chunking(tiny_model, speech, one_chunk_codes, preset, chunks):
    if not any(chunks):
        chunks = [*chunks, 700]
    codes = stream_encode(tiny_model.streaming_encoder(latency=preset), speech, chunks)
    assert torch.equal(codes, one_chunk_codes[preset])


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_frames_after_flush_cover_the_input_rounded_up(tiny_model, speech, one_chunk_codes, preset):
    assert one_chunk_codes[preset].shape == (1, 8, -(-speech.shape[1] // FRAME))
    enc = tiny_model.streaming_encoder(latency=preset, bandwidth=1.5)
    for n in (0, 1, 319, 320, 321, 3 * 320):
        enc.reset()
        codes = stream_encode(enc, speech[:, :n], [100]) if n else enc.flush()
        assert codes.shape == (1, 3, -(-n // FRAME))


def test_exact_acoustic_latent_equals_offline(tiny_model, speech):
    """The acoustic graph the encoder streams, at its exact setting, equals offline `acoustic_encoder`."""
    enc = tiny_model.streaming_encoder(latency="exact")
    assert enc.acoustic.delay == 28 and not enc.speculative
    x = pad_to_frames(speech)[:, None]
    frames = x.shape[-1] // FRAME
    ref = tiny_model.encode_acoustic(x, num_frames=frames)
    assert tiny_model.acoustic_encoder.output_length(x.shape[-1]) == frames  # the no-pad path: counts agree
    with torch.inference_mode():
        lat = run_graph(enc.acoustic, x, [1, 7, 2, 13])
    assert (lat - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_exact_preset_agrees_with_offline_codes(tiny_model, speech, one_chunk_codes):
    """Not exact (the semantic model is windowed): agreement is measured; a floor guards regressions."""
    ref = tiny_model.encode(pad_to_frames(speech)[:, None]).audio_codes
    agree = (one_chunk_codes["exact"] == ref).float().mean(dim=(0, 2))
    assert agree[0] >= 0.7, agree


def test_codes_of_a_prefix_are_a_prefix(tiny_model, speech):
    enc = tiny_model.streaming_encoder(latency="balanced")
    a = torch.cat([enc.step(speech[:, :12_000]), enc.step(speech[:, 12_000:])], dim=-1)
    enc.reset()
    b = enc.step(speech[:, :12_000])
    assert b.shape[-1] > 0 and torch.equal(a[..., : b.shape[-1]], b)


def test_reported_latency_is_the_measured_one(tiny_model, speech):
    """Code t comes out in the step that completes frame t + lookahead_frames, never later (worst case)."""
    for latency in (
        "balanced",
        "low",
        StreamingOptions(acoustic_lookahead=3, semantic_block=3, semantic_lookahead=2),
    ):
        enc = tiny_model.streaming_encoder(latency=latency)
        got, worst = 0, 0
        for f in range(speech.shape[1] // FRAME):
            got += enc.step(speech[:, f * FRAME : (f + 1) * FRAME]).shape[-1]
            worst = max(worst, (f + 1) - got)  # frames complete but not coded yet
        assert worst == enc.lookahead_frames
        assert enc.latency_ms == 20.0 * enc.lookahead_frames


def test_bandwidth_slices_the_quantizers(tiny_model, speech, one_chunk_codes):
    enc = tiny_model.streaming_encoder(latency="balanced", bandwidth=1.0)
    assert enc.n_q == 2
    codes = stream_encode(enc, speech, [])
    assert torch.equal(codes, one_chunk_codes["balanced"][:, :2])


def test_bad_input_is_rejected_with_a_clear_message(tiny_model):
    enc = tiny_model.streaming_encoder(batch_size=2)
    with pytest.raises(ValueError, match="floating point"):
        enc.step(np.zeros((2, 10), dtype=np.int16))
    with pytest.raises(ValueError, match="shape"):
        enc.step(torch.zeros(10))
    with pytest.raises(ValueError, match="batch_size 2"):
        enc.step(torch.zeros(3, 10))
    with pytest.raises(ValueError, match="unknown latency preset"):
        tiny_model.streaming_encoder(latency="fast")
    with pytest.raises(ValueError, match="unsupported bandwidth"):
        tiny_model.streaming_encoder(bandwidth=3.0)
    enc.step_slots({0: torch.zeros(100)})
    with pytest.raises(ValueError, match="not in sync.*step_slots"):
        enc.step(torch.zeros(2, 10))
    enc.flush_slots([0])
    with pytest.raises(ValueError, match="reset"):
        enc.step_slots({0: torch.zeros(10)})
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        StreamingOptions(semantic_lookahead=-1)


def test_a_model_loaded_in_inference_mode_streams(tiny_model, speech):
    """Loading under `torch.inference_mode()` is common; the engines must not depend on version counters
    (inference tensors have none)."""
    from xcodec_stream.model.xcodec import XcodecModel

    with torch.inference_mode():
        model = XcodecModel.from_pretrained("random:tiny")
        enc = model.streaming_encoder(batch_size=1, latency="balanced")
        codes = torch.cat([enc.step(torch.zeros(1, 1280)), enc.step(speech[:, :6400]), enc.flush()], dim=-1)
        dec = model.streaming_decoder(latency="balanced")
        audio = torch.cat([dec.step(codes), dec.flush()], dim=-1)
    assert codes.shape == (1, 8, 24) and audio.shape == (1, 24 * FRAME)
