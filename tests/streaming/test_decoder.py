"""Streaming decoder: `exact` == offline decode for any chunking; lengths; other presets chunk-invariant."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xcodec_stream.streaming.presets import StreamingOptions

FRAME = 320


def stream_decode(dec, codes: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    outs, pos = [], 0
    for n in [*chunks, codes.shape[-1]]:
        n = min(n, codes.shape[-1] - pos)
        outs.append(dec.step(codes[..., pos : pos + n]))
        pos += n
    outs.append(dec.flush())
    return torch.cat(outs, dim=-1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(0, 12), max_size=20))
def test_exact_decoder_equals_offline_decode_for_any_chunking(tiny_model, tiny_codes, chunks):
    dec = tiny_model.streaming_decoder(batch_size=2, latency="exact")
    ref = tiny_model.decode(tiny_codes).audio_values[:, 0]
    out = stream_decode(dec, tiny_codes, chunks)
    assert out.shape == (2, FRAME * tiny_codes.shape[-1])
    assert (out - ref).abs().max() <= 1e-5


def test_exact_decoder_one_frame_steps_and_empty_steps(tiny_model, tiny_codes):
    dec = tiny_model.streaming_decoder(batch_size=2, latency="exact")
    ref = tiny_model.decode(tiny_codes).audio_values[:, 0]
    out = stream_decode(dec, tiny_codes, [1, 0] * tiny_codes.shape[-1])
    assert (out - ref).abs().max() <= 1e-5


def test_exact_decoder_reports_its_receptive_field(tiny_model):
    dec = tiny_model.streaming_decoder(latency="exact")
    assert dec.lookahead_frames == 10  # DESIGN.md: frames t-10 .. t+10
    assert 9 * FRAME < dec.lookahead_samples <= 10 * FRAME
    assert dec.latency_ms == 180.0  # the first sample of frame t needs frames up to t+9


def test_output_lags_input_by_exactly_the_lookahead(tiny_model, tiny_codes):
    """Codes wait for a whole step of K frames; a step at P frames in brings out everything up to
    P*320 - lookahead_samples (exact), or the frames up to P - decoder_lookahead (speculative), nothing more
    or less. So the output never lags the codes by more than the lookahead plus K - 1 frames."""
    for latency in ("exact", StreamingOptions(decoder_lookahead=3, decoder_block=2)):
        dec = tiny_model.streaming_decoder(batch_size=2, latency=latency)
        k = dec.step_frames
        total = 0
        for f in range(tiny_codes.shape[-1]):
            total += dec.step(tiny_codes[..., f : f + 1]).shape[-1]
            p = (f + 1) // k * k  # frames committed: whole steps
            if dec.speculative:
                expected = max(0, p - 3) * FRAME
            else:
                expected = max(0, p * FRAME - dec.lookahead_samples)
            assert total == expected
            assert (f + 1) * FRAME - total <= dec.lookahead_samples + k * FRAME


@pytest.mark.parametrize("latency", ["balanced", "low", StreamingOptions(decoder_lookahead=4)])
def test_lower_lookahead_is_chunk_invariant_and_keeps_length(tiny_model, tiny_codes, latency):
    dec = tiny_model.streaming_decoder(batch_size=2, latency=latency)
    a = stream_decode(dec, tiny_codes, [])
    dec.reset()
    b = stream_decode(dec, tiny_codes, [1, 3, 0, 2, 7, 1, 1, 5])
    assert a.shape == b.shape == (2, FRAME * tiny_codes.shape[-1])
    assert (a - b).abs().max() <= 1e-5


def test_fewer_quantizers_decode_like_offline(tiny_model, tiny_codes):
    dec = tiny_model.streaming_decoder(batch_size=2, latency="exact")
    codes = tiny_codes[:, :3]
    ref = tiny_model.decode(codes).audio_values[:, 0]
    assert (stream_decode(dec, codes, [4, 4]) - ref).abs().max() <= 1e-5


def test_bad_input_is_rejected_with_a_clear_message(tiny_model, tiny_codes):
    dec = tiny_model.streaming_decoder(batch_size=2)
    with pytest.raises(ValueError, match="integers"):
        dec.step(tiny_codes.float())
    with pytest.raises(ValueError, match="in 0..1023"):
        dec.step(tiny_codes * 0 + 5000)
    with pytest.raises(ValueError, match="quantizers"):
        dec.step(torch.zeros(2, 9, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size 2"):
        dec.step(tiny_codes[:1])
    with pytest.raises(ValueError, match="slot must be"):
        dec.step_slots({2: tiny_codes[0]})
    dec.step_slots({0: tiny_codes[0, :, :3]})
    with pytest.raises(ValueError, match="not in sync"):
        dec.step(tiny_codes[..., :1])
    dec.flush_slots([0])
    with pytest.raises(ValueError, match="reset"):
        dec.step_slots({0: tiny_codes[0, :, :1]})
    dec.reset(0)
    assert dec.step_slots({0: tiny_codes[0, :, :1]})[0].dtype == torch.float32


def test_lower_lookahead_blocks_equal_offline_decode_of_the_codes_so_far(tiny_model, tiny_codes):
    """The step that ends at P frames brings out frames P - B - lookahead .. P - lookahead - 1: offline decode
    of the codes up to frame P, i.e. the missing future is zeros and the codes end there: exactly what the
    decoder knows when it emits them."""
    block, ahead = 2, 3
    dec = tiny_model.streaming_decoder(latency=StreamingOptions(decoder_lookahead=ahead, decoder_block=block))
    assert dec.speculative and dec.lookahead_frames == block - 1 + ahead
    codes = tiny_codes[:1]
    frames = codes.shape[-1]
    out = stream_decode(dec, codes, [5, 1, 0, 9])[0]
    assert out.shape[-1] == frames * FRAME
    for p in range(block, frames + ahead + block, block):
        cut = min(p, frames)
        ref = tiny_model.decode(codes[..., :cut]).audio_values[0, 0]
        span = slice(max(0, p - block - ahead) * FRAME, max(0, min(p - ahead, frames)) * FRAME)
        if ref[span].numel():
            assert (out[span] - ref[span]).abs().max() <= 1e-5, p


def test_a_lead_lines_the_steps_up_with_the_encoders_codes(tiny_model, speech):
    """The encoder's codes come out in groups ending at P - L; a decoder that starts `lead_for` frames early
    steps exactly when a group arrives (no codes wait), and its output is the same audio, in place."""
    enc = tiny_model.streaming_encoder(latency="balanced")
    plain = tiny_model.streaming_decoder(latency="balanced")
    led = tiny_model.streaming_decoder(latency="balanced")
    lead = enc.lead_for(led.step_frames)
    assert lead == enc.lag % enc.step_frames == 3
    led.reset(0, lead=lead)
    outs = {"plain": [], "led": []}
    for i in range(0, speech.shape[1], 1280):
        codes = enc.step(speech[:, i : i + 1280])
        outs["plain"].append(plain.step(codes))
        outs["led"].append(led.step(codes))
        assert led.pending[0].shape[1] == 0  # nothing waits for a step to fill
    codes = enc.flush()
    outs["plain"] += [plain.step(codes), plain.flush()]
    outs["led"] += [led.step(codes), led.flush()]
    a, b = (torch.cat(outs[k], dim=-1) for k in ("plain", "led"))
    assert a.shape == b.shape == (1, -(-speech.shape[1] // FRAME) * FRAME)
    assert (a - b).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="lead must be"):
        led.reset(0, lead=4)
