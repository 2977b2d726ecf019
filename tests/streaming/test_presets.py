"""The presets keep their promises: budgets, exactness where claimed; options are validated."""

from __future__ import annotations

import pytest

from xcodec_stream.streaming import PRESETS, StreamingOptions


@pytest.mark.parametrize(("preset", "budget_ms"), [("balanced", 300.0), ("low", 100.0)])
def test_latency_budgets(tiny_model, preset, budget_ms):
    enc = tiny_model.streaming_encoder(latency=preset)
    dec = tiny_model.streaming_decoder(latency=preset)
    assert enc.latency_ms + dec.latency_ms <= budget_ms
    assert (
        enc.latency_ms == 20.0 * enc.lookahead_frames and enc.lookahead_samples == 320 * enc.lookahead_frames
    )


def test_exact_is_exact_and_its_semantic_window_adds_no_latency(tiny_model):
    enc = tiny_model.streaming_encoder(latency="exact")
    dec = tiny_model.streaming_decoder(latency="exact")
    assert not enc.speculative and not dec.speculative
    assert enc.semantic.lookahead <= enc.acoustic.delay == enc.lag  # the semantic lookahead is free
    assert enc.lookahead_frames == enc.step_frames - 1 + enc.acoustic.delay
    assert enc.latency_ms + dec.latency_ms == 820.0


def test_balanced_keeps_the_decoder_exact(tiny_model):
    assert not tiny_model.streaming_decoder(latency="balanced").speculative


def test_options_are_validated():
    with pytest.raises(ValueError, match="semantic_block must be >= 1"):
        StreamingOptions(semantic_block=0)
    with pytest.raises(ValueError, match="integer >= 0"):
        StreamingOptions(acoustic_lookahead=1.5)
    assert PRESETS["low"].with_(semantic_block=3).semantic_block == 3
