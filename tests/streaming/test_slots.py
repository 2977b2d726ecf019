"""Batched slots: each row of a shared batch equals its session run alone (staggered, reset, idle slot)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.streaming.test_decoder import stream_decode
from tests.streaming.test_encoder import stream_encode


def _signals(speech: torch.Tensor) -> list[torch.Tensor]:
    """Three different sessions' audio of different lengths."""
    x = speech[0]
    return [x[:20_000], torch.roll(x, 3000)[:15_500] * 0.7, x.flip(0)[:9_000]]


def _schedule(
    lengths: list[int], chunks: list[list[int]], starts: list[int]
) -> list[dict[int, tuple[int, int]]]:
    """Per tick, {session: (offset, length)}; sessions start at different ticks; a session that has nothing
    left is flushed at its next tick (marked length -1)."""
    ticks: list[dict[int, tuple[int, int]]] = []
    pos = [0] * len(lengths)
    k = [0] * len(lengths)
    done = [False] * len(lengths)
    t = 0
    while not all(done):
        tick = {}
        for s in range(len(lengths)):
            if done[s] or t < starts[s]:
                continue
            if pos[s] >= lengths[s]:
                tick[s] = (pos[s], -1)
                done[s] = True
                continue
            n = chunks[s][k[s] % len(chunks[s])]
            k[s] += 1
            tick[s] = (pos[s], n)
            pos[s] += n
        ticks.append(tick)
        t += 1
    return ticks


@pytest.mark.parametrize("preset", ["balanced", "low"])
def test_encoder_rows_equal_sessions_alone(tiny_model, speech, preset):
    sigs = _signals(speech)
    alone = [stream_encode(tiny_model.streaming_encoder(latency=preset), s[None], [1000])[0] for s in sigs]
    # batch of 4: session 0 and 1 in slots 0 and 2; slot 1 runs session 2 after a reset in the middle of an
    # abandoned session; slot 3 stays idle throughout
    enc = tiny_model.streaming_encoder(batch_size=4, latency=preset)
    idle_before = [t[3].clone() for t in enc.bank.tensors.values()]
    slot_of = {0: 0, 1: 2, 2: 1}
    chunks = [[320, 0, 961, 4800], [50, 7000, 0, 333], [640, 1]]
    ticks = _schedule([len(s) for s in sigs], chunks, starts=[0, 3, 8])
    got: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
    abandoned = torch.roll(sigs[0], 777)
    enc.step_slots({1: abandoned[:5000]})  # a session in slot 1 that will be dropped by a reset
    for t, tick in enumerate(ticks):
        if t == 8:
            enc.reset(1)
        feed = {slot_of[s]: sigs[s][o : o + n] for s, (o, n) in tick.items() if n >= 0}
        if t < 8:
            feed[1] = abandoned[5000 + 100 * t : 5100 + 100 * t]
        for slot, codes in enc.step_slots(feed).items():
            for s, sl in slot_of.items():
                if sl == slot and (s != 2 or t >= 8):
                    got[s].append(codes)
        flush = [slot_of[s] for s, (_, n) in tick.items() if n < 0]
        for slot, codes in enc.flush_slots(flush).items():
            got[next(s for s, sl in slot_of.items() if sl == slot)].append(codes)
    for s in range(3):
        assert torch.equal(torch.cat(got[s], dim=-1), alone[s]), f"session {s}"
    for before, t in zip(idle_before, enc.bank.tensors.values(), strict=True):
        assert torch.equal(before, t[3]), "the idle slot's state moved"


def test_decoder_rows_equal_sessions_alone(tiny_model, tiny_codes):
    codes = [tiny_codes[0], tiny_codes[1, :3, :50], tiny_codes[0, :5, 7:60]]  # different n_q and lengths
    alone = [stream_decode(tiny_model.streaming_decoder(latency="exact"), c[None], [3])[0] for c in codes]
    dec = tiny_model.streaming_decoder(batch_size=4, latency="exact")
    idle_before = [t[3].clone() for t in dec.bank.tensors.values()]
    slot_of = {0: 2, 1: 0, 2: 1}
    got: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
    rng = np.random.default_rng(0)
    pos = [0, 0, 0]
    starts = [0, 2, 5]
    dec.step_slots({1: tiny_codes[1, :, :9]})  # abandoned session, reset at tick 5
    t = 0
    while any(p >= 0 for p in pos):
        if t == 5:
            dec.reset(1)
        feed, flush = {}, []
        for s in range(3):
            if pos[s] < 0 or t < starts[s]:
                continue
            if pos[s] >= codes[s].shape[1]:
                flush.append(slot_of[s])
                pos[s] = -1
                continue
            n = int(rng.integers(0, 6))
            feed[slot_of[s]] = codes[s][:, pos[s] : pos[s] + n]
            pos[s] += n
        for slot, audio in dec.step_slots(feed).items():
            got[next(s for s, sl in slot_of.items() if sl == slot)].append(audio)
        for slot, audio in dec.flush_slots(flush).items():
            got[next(s for s, sl in slot_of.items() if sl == slot)].append(audio)
        t += 1
    for s in range(3):
        out = torch.cat(got[s])
        assert out.shape == alone[s].shape == (320 * codes[s].shape[1],)
        assert (out - alone[s]).abs().max() <= 1e-5, f"session {s}"
    for before, t in zip(idle_before, dec.bank.tensors.values(), strict=True):
        assert torch.equal(before, t[3]), "the idle slot's state moved"


def test_set_bandwidth_is_per_slot(tiny_model, speech):
    enc = tiny_model.streaming_encoder(batch_size=2, latency="low")
    enc.set_bandwidth(1, 0.5)
    x = speech[0, :3200]
    out = enc.step_slots({0: x, 1: x})
    out.update(enc.flush_slots([0, 1]))
    assert out[0].shape[0] == 8 and out[1].shape[0] == 1
    assert torch.equal(out[0][:1], out[1])
    with pytest.raises(ValueError, match="different bandwidths"):
        enc.reset()
        enc.set_bandwidth(1, 0.5)
        enc.step(torch.zeros(2, 320))


def test_state_bank_is_one_flat_buffer_per_dtype(tiny_model):
    """The named states are views of one buffer per dtype: a step's rows move with one copy per dtype, and
    take -> views -> pack -> put gives every named state back unchanged, touching no other row."""
    enc = tiny_model.streaming_encoder(batch_size=3, latency="balanced")
    bank = enc.bank
    assert set(bank.flat) == {torch.float32, torch.float64}  # running statistics stay float64
    assert len(bank.tensors) > 20
    for name, t in bank.tensors.items():
        assert t.untyped_storage().data_ptr() == bank.flat[t.dtype].untyped_storage().data_ptr(), name
        assert t.shape == (4, *bank.templates[name].shape)  # capacity + the scratch row
    g = torch.Generator().manual_seed(0)
    for f in bank.flat.values():
        f.copy_(torch.randn(f.shape, generator=g, dtype=f.dtype))
    before = {k: t.clone() for k, t in bank.tensors.items()}
    rows = torch.tensor([2, 0])
    named = bank.views(bank.take(rows))
    for k, t in named.items():
        assert torch.equal(t, before[k][rows]), k
    changed = {k: t + 1 for k, t in named.items()}
    bank.put(rows, bank.pack(changed, 2))
    for k, t in bank.tensors.items():
        assert torch.equal(t[rows], before[k][rows] + 1), k
        assert torch.equal(t[[1, 3]], before[k][[1, 3]]), k  # other rows untouched
    bank.reset(torch.tensor([0]))
    for k, t in bank.tensors.items():
        assert torch.equal(t[0], bank.templates[k]), k
