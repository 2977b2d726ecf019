"""`atomic(slots)`: a step that raises part-way (after some internal calls committed) leaves its slots as they
were, so giving the same input again gives the output of a run that never failed (the daemon's retry after
an out-of-memory error relies on this)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


class _FailOnce:
    """Wraps an engine's `_run`: the `nth` internal call raises MemoryError once, every other call runs."""

    def __init__(self, engine, nth: int) -> None:
        self.engine, self.nth, self.calls, self.run = engine, nth, 0, engine._run

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.nth:
            raise MemoryError("simulated out-of-memory")
        return self.run(*args, **kwargs)


def _encode(enc, pieces, fail_at: int | None):
    """Steps slot 0 and slot 1 together, piece by piece, then flushes both; the step `fail_at` raises part-way
    once and is given again."""
    out: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    for i, (a, b) in enumerate(pieces):
        if i == fail_at:
            enc._run = _FailOnce(enc, nth=2)  # the first internal call commits, the second raises
            with pytest.raises(MemoryError), enc.atomic([0, 1]):
                enc.step_slots({0: a, 1: b})
            assert enc._run.calls == 2
            del enc._run
        with enc.atomic([0, 1]):
            got = enc.step_slots({0: a, 1: b})
        for s in (0, 1):
            out[s].append(got[s])
    with enc.atomic([0, 1]):
        got = enc.flush_slots([0, 1])
    return [torch.cat([*out[s], got[s]], dim=-1) for s in (0, 1)]


@pytest.mark.parametrize("preset", ["exact", "balanced"])
def test_encoder_step_that_raises_can_be_given_again(tiny_model, speech, preset):
    x = speech[0]
    other = torch.roll(x, 3000) * 0.5
    # 130 frames in the failing step: three internal calls (at most 50 frames each), unequal rows
    cuts = [0, 700, 700 + 130 * 320, 700 + 130 * 320 + 5, x.shape[0]]
    pieces = [(x[a:b], other[a : b - 3 if b - 3 > a else b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    want = _encode(tiny_model.streaming_encoder(batch_size=2, latency=preset), pieces, None)
    got = _encode(tiny_model.streaming_encoder(batch_size=2, latency=preset), pieces, 1)
    for w, g in zip(want, got, strict=True):
        assert w.shape[-1] > 0
        assert torch.equal(w, g)


def test_decoder_step_that_raises_can_be_given_again(tiny_model, tiny_codes):
    def decode(fail: bool) -> list[np.ndarray]:
        dec = tiny_model.streaming_decoder(batch_size=2, latency="exact")
        out: dict[int, list[torch.Tensor]] = {0: [], 1: []}
        for a, b in [(0, 3), (3, 60), (60, tiny_codes.shape[-1])]:
            chunk = {0: tiny_codes[0, :, a:b], 1: tiny_codes[1, :, a : max(a, b - 1)]}
            if fail and a == 3:
                dec._run = _FailOnce(dec, nth=1)
                with pytest.raises(MemoryError), dec.atomic([0, 1]):
                    dec.step_slots(chunk)
                del dec._run
            with dec.atomic([0, 1]):
                got = dec.step_slots(chunk)
            for s in (0, 1):
                out[s].append(got[s].reshape(-1))
        got = dec.flush_slots([0, 1])
        return [torch.cat([*out[s], got[s].reshape(-1)]).numpy() for s in (0, 1)]

    for w, g in zip(decode(False), decode(True), strict=True):
        assert w.size > 0
        np.testing.assert_array_equal(w, g)


def test_atomic_rejects_bad_slots_before_any_change(tiny_model):
    enc = tiny_model.streaming_encoder(batch_size=2)
    with pytest.raises(ValueError, match="slot must be an integer"):
        with enc.atomic([0, 5]):
            pass


def test_atomic_copies_the_state_only_when_a_step_writes_it(tiny_model, speech):
    """A server tick mostly only buffers input (chunks shorter than a step): no state copy then, and an error
    still gives the buffered input back; the first step inside copies the rows once."""
    enc = tiny_model.streaming_encoder(batch_size=2, latency="balanced")
    step = enc.step_frames * enc.frame_size
    gathers = []
    real_take = enc.bank.take
    enc.bank.take = lambda rows: gathers.append(rows) or real_take(rows)
    x = speech[0]
    with pytest.raises(RuntimeError, match="after buffering"), enc.atomic([0, 1]):
        assert enc.step_slots({0: x[: step // 2]})[0].shape[-1] == 0  # half a step: buffered, no step
        raise RuntimeError("after buffering")
    assert gathers == [] and enc.pending[0].numel() == 0  # nothing copied; the buffered input given back
    with enc.atomic([0, 1]):
        enc.step_slots({0: x[: 3 * step]})  # three steps: the bank rows are saved once, before the first
    rows = [g.tolist() for g in gathers]
    assert rows.count([0, 1]) == 1 and len(rows) == 1 + 3  # the save once, and each step's gather of its row
