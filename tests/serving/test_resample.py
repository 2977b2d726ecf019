"""The streaming resampler: chunked == whole bit for bit, exact lengths, frequencies and levels kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xcodec_stream.streaming.resample import StreamingResampler, resample

RATES = [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000]


def run_chunked(x: np.ndarray, a: int, b: int, sizes: list[int]) -> np.ndarray:
    r = StreamingResampler(a, b)
    out, i, k = [], 0, 0
    while i < x.size:
        n = sizes[k % len(sizes)]
        out.append(r.process(x[i : i + n]))
        i, k = i + n, k + 1
    out.append(r.flush())
    return np.concatenate(out)


@settings(max_examples=60, deadline=None)
@given(
    a=st.sampled_from(RATES),
    b=st.sampled_from(RATES),
    n=st.integers(0, 3000),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_whole(a: int, b: int, n: int, sizes: list[int], seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    whole = resample(x, a, b)
    assert whole.size == -(-n * b // a)
    np.testing.assert_array_equal(run_chunked(x, a, b, sizes), whole)


@pytest.mark.parametrize(
    "a,b", [(48000, 16000), (16000, 48000), (44100, 16000), (16000, 8000), (16000, 16000)]
)
def test_round_trip_length_and_progress(a: int, b: int) -> None:
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32)
    r = StreamingResampler(a, b)
    y = r.process(x)
    # everything but the lookahead is out before the flush
    assert y.size >= r.expected_output(x.size - r.lookahead) - 1
    y = np.concatenate([y, r.flush()])
    assert y.size == r.expected_output(x.size) == -(-x.size * b // a)
    assert r.flush().size == 0
    with pytest.raises(RuntimeError, match="flushed"):
        r.process(x)
    r.reset()
    np.testing.assert_array_equal(np.concatenate([r.process(x), r.flush()]), y)


@pytest.mark.parametrize(
    "a,b,f", [(44100, 16000, 1000.0), (16000, 48000, 3000.0), (48000, 16000, 440.0), (8000, 16000, 1234.0)]
)
def test_sine_keeps_frequency_and_level(a: int, b: int, f: float) -> None:
    t = np.arange(a) / a
    x = (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)
    y = resample(x, a, b)[b // 10 : -b // 10]  # skip the zero-padded edges
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    peak = np.argmax(spec) * b / y.size
    assert abs(peak - f) < 2 * b / y.size
    assert abs(np.sqrt(np.mean(y**2)) - 0.5 / np.sqrt(2)) < 0.005
    # the resampled sine matches the ideal one at the output instants
    ty = (np.arange(y.size) + b // 10) / b
    np.testing.assert_allclose(y, 0.5 * np.sin(2 * np.pi * f * ty), atol=2e-3)


def test_downsampling_removes_what_does_not_fit() -> None:
    a, b = 48000, 16000
    t = np.arange(a) / a
    x = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above the 8 kHz output Nyquist frequency
    y = resample(x, a, b)[1000:-1000]
    assert np.sqrt(np.mean(y**2)) < 1e-2


def test_identity_is_exact_and_immediate() -> None:
    x = np.random.default_rng(1).standard_normal(999).astype(np.float32)
    r = StreamingResampler(16000, 16000)
    assert r.lookahead == 0 and r.latency_ms == 0
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().size == 0


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="positive"):
        StreamingResampler(0, 16000)
