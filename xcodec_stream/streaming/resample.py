"""Streaming sample-rate converter: polyphase windowed sinc with carried state (chunked output == whole)."""

from __future__ import annotations

import functools
import math

import numpy as np

# Rows of the (outputs x taps) window matrix computed at once; bounds memory for whole-file calls.
_BLOCK = 4096


@functools.lru_cache(maxsize=32)
def _phase_table(
    up: int, down: int, half_taps: int, cutoff: float, half_width: float, beta: float
) -> np.ndarray:
    """Taps for each of the `up` output phases: row p weights x[i-(W-1)] ... x[i+W] for t = i + p/up."""
    j = np.arange(-(half_taps - 1), half_taps + 1, dtype=np.float64)
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    d = frac - j[None, :]  # distance (input samples) from the output instant to each tap
    u = np.clip(d / half_width, -1.0, 1.0)
    window = np.i0(beta * np.sqrt(1.0 - u * u)) / np.i0(beta)
    window[np.abs(d) >= half_width] = 0.0
    taps = cutoff * np.sinc(cutoff * d) * window
    # Unit DC gain for every phase, so that a constant stays constant whatever the output instant.
    taps /= taps.sum(axis=1, keepdims=True)
    table = taps.astype(np.float32)
    table.setflags(write=False)
    return table


class StreamingResampler:
    """Converts a mono float32 stream from `in_rate` to `out_rate` chunk by chunk.

    Output sample k sits at input time k * in_rate / out_rate (no shift of the timeline). It waits for
    `lookahead` input samples past that instant; `flush()` zero-pads the end and completes the stream
    to exactly ceil(n_in * out_rate / in_rate) samples. The result does not depend on how the input was
    cut into chunks: each output sample is the same dot product over the same input samples.
    """

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        zero_crossings: int = 16,
        rolloff: float = 0.945,
        beta: float = 8.6,
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        if zero_crossings < 1 or not 0.0 < rolloff <= 1.0:
            raise ValueError("zero_crossings must be >= 1 and rolloff in (0, 1]")
        g = math.gcd(int(in_rate), int(out_rate))
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.up, self.down = self.out_rate // g, self.in_rate // g
        self.identity = self.up == self.down
        cutoff = rolloff * min(1.0, self.up / self.down)  # relative to the input Nyquist frequency
        half_width = zero_crossings / cutoff
        self.half_taps = 0 if self.identity else int(math.ceil(half_width))
        self._table = (
            None
            if self.identity
            else _phase_table(self.up, self.down, self.half_taps, cutoff, half_width, beta)
        )
        self.reset()

    @property
    def lookahead(self) -> int:
        """Input samples needed past an output instant before that output sample can be produced."""
        return self.half_taps

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.half_taps / self.in_rate

    def reset(self) -> None:
        """Start a new stream."""
        self.n_in = 0
        self.n_out = 0
        self.finished = False
        w = self.half_taps
        # The stream is zero before its first sample: keep W-1 zeros of left context.
        self._buf = np.zeros(max(w - 1, 0), dtype=np.float32)
        self._buf_start = -(w - 1) if w else 0

    def expected_output(self, n_in: int) -> int:
        """Samples a finished stream of `n_in` input samples produces."""
        return -(-n_in * self.up // self.down)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed a chunk; returns every output sample that is now final."""
        if self.finished:
            raise RuntimeError("resampler already flushed; call reset() to start a new stream")
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        self.n_in += x.size
        if self.identity:
            self.n_out += x.size
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        ready = -(-(self.n_in - self.half_taps) * self.up // self.down)
        return self._emit(max(ready, self.n_out))

    def flush(self) -> np.ndarray:
        """End of stream: zero-pad and return the remaining output (total = expected_output(n_in))."""
        if self.finished:
            return np.zeros(0, dtype=np.float32)
        self.finished = True
        total = self.expected_output(self.n_in)
        if self.identity:
            return np.zeros(0, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self.half_taps + 1, dtype=np.float32)])
        return self._emit(total)

    def _emit(self, k_end: int) -> np.ndarray:
        k0 = self.n_out
        if k_end <= k0:
            return np.zeros(0, dtype=np.float32)
        w2 = 2 * self.half_taps
        windows_all = np.lib.stride_tricks.sliding_window_view(self._buf, w2)
        out = np.empty(k_end - k0, dtype=np.float32)
        up, down = self.up, self.down
        for b0 in range(k0, k_end, _BLOCK):
            n = min(_BLOCK, k_end - b0)
            # Outputs of one phase are every `up`-th: their windows start every `down` input samples, a strided
            # view (no gather), and they share one row of taps (broadcast).
            for k in range(b0, b0 + min(up, n)):
                i, phase = divmod(k * down, up)
                count = -(-(b0 + n - k) // up)
                r0 = i - (self.half_taps - 1) - self._buf_start
                windows = windows_all[r0 : r0 + (count - 1) * down + 1 : down]
                # einsum's row-wise sum of products: the same sum order for a sample in any chunking (and 5x
                # faster than a product array and its row sums)
                out[k - k0 : b0 - k0 + n : up] = np.einsum("ij,j->i", windows, self._table[phase])
        self.n_out = k_end
        # Drop input that no future output sample reads.
        keep_from = (k_end * self.down) // self.up - (self.half_taps - 1)
        cut = keep_from - self._buf_start
        if cut > 0:
            self._buf = self._buf[cut:].copy()
            self._buf_start = keep_from
        return out


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-signal conversion with the streaming resampler (one chunk + flush)."""
    r = StreamingResampler(in_rate, out_rate)
    return np.concatenate([r.process(x), r.flush()])
