"""Streaming encoder: waveform chunks of any length in, code frames out, many sessions in one forward pass.

Per call, every due row advances by its own number of whole frames (the sub-frame remainder waits in a
per-row buffer). Frames are grouped in blocks of `semantic_block`: the semantic transformer runs once per
block on a fixed window, and, unless the acoustic encoder is exact, the block's acoustic latents come from
one speculative run of the acoustic encoder that takes the signal to end `acoustic_lookahead` frames after
the block (a copy of the state; the state itself only takes real input). A frame's code is out as soon as
both its latents exist. Codes do not depend on how the signal was chunked. See docs/STREAMING.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import OPEN_END, shift
from xcodec_stream.streaming.presets import StreamingOptions, resolve
from xcodec_stream.streaming.semantic import SemanticStream
from xcodec_stream.streaming.slots import MAX_FRAMES_PER_CALL, SlotEngine, take_frames
from xcodec_stream.streaming.state import StateBank


@dataclass
class _Step:
    """One internal call's inputs and positions (host arrays, one entry per row of the call)."""

    x: torch.Tensor  # (n, 1, K * hop)
    frames: int  # K
    pos: np.ndarray  # frames committed before the call
    pos_new: np.ndarray  # ... and after it
    end: np.ndarray  # signal length in frames (OPEN_END while open)
    adv: np.ndarray | None  # frames committed now, None when every row commits all K
    end_arg: np.ndarray | None  # `end` if any row ended, else None (no end masks needed)


def _as_pcm(pcm: object, dims: int) -> torch.Tensor:
    t = pcm if isinstance(pcm, torch.Tensor) else torch.as_tensor(np.asarray(pcm))
    if t.dim() != dims:
        shape = "(batch, samples)" if dims == 2 else "(samples,)"
        raise ValueError(f"pcm must have shape {shape}, got {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"pcm must be floating point (float32 in [-1, 1]), got {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float32)


def _group_arange(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts [2, 0, 3]: rows [0, 0, 2, 2, 2] and index within row [0, 1, 0, 1, 2]."""
    rep = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return rep, np.arange(len(rep)) - starts[rep]


class StreamingEncoder(SlotEngine):
    """Chunked X-Codec encoder over `batch_size` slots. Build it with `model.streaming_encoder(...)`.

    `step(pcm)` (B, n) float32 -> int64 codes (B, n_q, F_new) for rows in sync; `step_slots({slot: pcm})`
    for rows at different positions; `flush()` / `flush_slots([...])` end streams (the last partial frame
    zero-padded); `reset(slot)` starts a new session in a slot. Results are CPU tensors.
    """

    kind = "encoder"
    row_fields = (
        *SlotEngine.row_fields,
        *("pending", "pending_n", "ac_blocks", "ac_done", "sem_blocks", "coded"),
    )

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int = 1,
        bandwidth: float | None = None,
        latency: str | StreamingOptions = "balanced",
    ) -> None:
        super().__init__(model, batch_size)
        self.options = opts = resolve(latency)
        hop = self.frame_size
        self.acoustic = StreamGraph(chain_from_module(model.acoustic_encoder), hop)
        # exact: latents straight from the committed stream; otherwise per block from a speculative run
        # (only where that is faster than exact; it also keeps every block within reach of the row's state)
        self.speculative = (
            opts.acoustic_lookahead is not None
            and opts.semantic_block - 1 + opts.acoustic_lookahead < self.acoustic.delay
        )
        self.semantic = SemanticStream(
            model,
            opts.semantic_block,
            opts.semantic_left_context,
            opts.semantic_lookahead,
            MAX_FRAMES_PER_CALL,
            cache=opts.semantic_cache,
        )
        ac_channels = model.acoustic_encoder.conv2.out_channels
        sem_channels = model.encoder_semantic.out_channels
        # latents wait here until the other branch has the same frame; bounded by the two branches' lags
        self.ring = (
            self.acoustic.delay + 2 * opts.semantic_block + opts.semantic_lookahead + MAX_FRAMES_PER_CALL
        )
        n_ac, n_sem = len(self.acoustic.templates), len(self.semantic.templates)
        self._ac = slice(0, n_ac)
        self._sem = slice(n_ac, n_ac + n_sem)
        self._ring_a, self._ring_s = n_ac + n_sem, n_ac + n_sem + 1
        templates = [
            *self.acoustic.templates,
            *self.semantic.templates,
            torch.zeros(ac_channels, self.ring),
            torch.zeros(sem_channels, self.ring),
        ]
        self.bank = StateBank(batch_size, templates, self.device, self.dtype)
        self.pending = torch.zeros(batch_size, hop)
        self.pending_n = np.zeros(batch_size, dtype=np.int64)
        self.ac_blocks = np.zeros(batch_size, dtype=np.int64)  # speculative acoustic blocks done
        self.ac_done = np.zeros(batch_size, dtype=np.int64)  # acoustic latent frames in the ring
        self.sem_blocks = np.zeros(batch_size, dtype=np.int64)  # semantic blocks done
        self.coded = np.zeros(batch_size, dtype=np.int64)  # code frames emitted
        self.default_n_q = model.num_quantizers_for_bandwidth(bandwidth)
        self.n_q_slot = np.full(batch_size, self.default_n_q, dtype=np.int64)
        self.max_n_q = model.config.num_quantizers

    # ---- properties -------------------------------------------------------------------------------
    @property
    def n_q(self) -> int:
        """Quantizers per frame for the `bandwidth` given at construction (set_bandwidth changes a slot's)."""
        return self.default_n_q

    @property
    def acoustic_lookahead_frames(self) -> int:
        """Frames after frame t the acoustic encoder waits for (worst case within a block)."""
        if not self.speculative:
            return self.acoustic.delay
        return self.options.semantic_block - 1 + self.options.acoustic_lookahead

    @property
    def lookahead_frames(self) -> int:
        """Frames after frame t whose samples must be in before frame t's code is out (worst case)."""
        return max(self.acoustic_lookahead_frames, self.semantic.latency_frames())

    @property
    def lookahead_samples(self) -> int:
        return self.lookahead_frames * self.frame_size

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: from the last sample of a frame entering to its code being out."""
        return 1000.0 * self.lookahead_samples / self.sample_rate

    def set_bandwidth(self, slot: int, bandwidth: float | None) -> None:
        """Codes of `slot` keep the first n_q(bandwidth) quantizers (RVQ prefixes are exact)."""
        self.n_q_slot[self._slot(slot)] = self.model.num_quantizers_for_bandwidth(bandwidth)

    def _reset_rows(self, rows: np.ndarray) -> None:
        self.pending[torch.from_numpy(rows)] = 0.0
        self.pending_n[rows] = 0
        self.ac_blocks[rows] = 0
        self.ac_done[rows] = 0
        self.sem_blocks[rows] = 0
        self.coded[rows] = 0
        self.n_q_slot[rows] = self.default_n_q

    # ---- public steps -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, pcm: object) -> torch.Tensor:
        """(B, n) float32, every row in sync -> int64 (B, n_q, F_new) codes of the frames now complete."""
        pcm = _as_pcm(pcm, 2)
        if pcm.shape[0] != self.batch_size:
            raise ValueError(f"pcm has {pcm.shape[0]} rows, this encoder has batch_size {self.batch_size}")
        rows = np.arange(self.batch_size)
        self._open(rows)
        n_q = self._uniform_n_q(rows)
        if not (
            (self.pending_n == self.pending_n[0]).all()
            and (self.pos == self.pos[0]).all()
            and (self.coded == self.coded[0]).all()
        ):
            raise ValueError(
                "the rows are not in sync (different stream positions); use step_slots({slot: pcm})"
            )
        p = int(self.pending_n[0])
        audio = torch.cat([self.pending[:, :p], pcm], dim=1)
        frames = audio.shape[1] // self.frame_size
        used = frames * self.frame_size
        self.pending[:, : audio.shape[1] - used] = audio[:, used:]
        self.pending_n[:] = audio.shape[1] - used
        if frames == 0:
            return torch.zeros(self.batch_size, n_q, 0, dtype=torch.long)
        codes, counts = self._advance(rows, audio[:, :used], np.full(self.batch_size, frames))
        return self._stack(codes, counts, n_q)

    @torch.inference_mode()
    def step_slots(self, chunks: dict[int, object]) -> dict[int, torch.Tensor]:
        """{slot: 1-D float32 pcm of any length} -> {slot: int64 (n_q_slot, F_i)}; one batched forward for all
        due slots; slots not given do not move."""
        slots = [self._slot(s) for s in chunks]
        if len(set(slots)) != len(slots):
            raise ValueError("a slot appears twice")
        self._open(slots)
        pcms = [_as_pcm(chunks[s], 1) for s in chunks]
        rows = np.array(slots, dtype=np.int64)
        out: dict[int, torch.Tensor] = {}
        if not len(rows):
            return out
        totals = self.pending_n[rows] + np.array([len(p) for p in pcms], dtype=np.int64)
        frames = totals // self.frame_size
        audio = torch.zeros(len(rows), int(frames.max()) * self.frame_size)
        for i, (row, pcm) in enumerate(zip(rows, pcms, strict=True)):  # assembling input, not compute
            joined = torch.cat([self.pending[row, : self.pending_n[row]], pcm])
            used = int(frames[i]) * self.frame_size
            audio[i, :used] = joined[:used]
            self.pending[row, : len(joined) - used] = joined[used:]
            self.pending_n[row] = len(joined) - used
        order = np.argsort(rows)
        codes, counts = self._advance(rows[order], audio[order], frames[order])
        return self._split(rows[order], codes, counts)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End every row's stream: the remaining frames (end zero-padded to a whole frame) -> (B, n_q, F)."""
        rows = np.arange(self.batch_size)
        self._open(rows)
        n_q = self._uniform_n_q(rows)
        if not ((self.pos == self.pos[0]).all() and (self.pending_n == self.pending_n[0]).all()):
            raise ValueError("the rows are not in sync (different stream positions); use flush_slots([...])")
        codes, counts = self._flush_rows(rows)
        return self._stack(codes, counts, n_q)

    @torch.inference_mode()
    def flush_slots(self, slots: list[int]) -> dict[int, torch.Tensor]:
        """End the streams of `slots`: {slot: remaining codes}. A flushed slot is finished until reset."""
        rows = np.array(sorted({self._slot(s) for s in slots}), dtype=np.int64)
        self._open(rows)
        if not len(rows):
            return {}
        codes, counts = self._flush_rows(rows)
        return self._split(rows, codes, counts)

    # ---- internals ---------------------------------------------------------------------------------
    def _uniform_n_q(self, rows: np.ndarray) -> int:
        n_q = self.n_q_slot[rows]
        if not (n_q == n_q[0]).all():
            raise ValueError("slots have different bandwidths; use step_slots / flush_slots")
        return int(n_q[0])

    def _flush_rows(self, rows: np.ndarray) -> tuple[list[torch.Tensor], list[np.ndarray]]:
        partial = self.pending_n[rows]
        self.end[rows] = self.pos[rows] + (partial > 0)
        # the rest of the signal; exact acoustic encoder: then its lookahead as zeros (speculative blocks need
        # nothing more: they take the signal to end where it ends). One call at least: the last blocks run.
        extra = 0 if self.speculative else self.acoustic.delay
        frames = self.end[rows] - self.pos[rows] + extra
        audio = torch.zeros(len(rows), max(1, int(frames.max())) * self.frame_size)
        keep = torch.arange(self.frame_size)[None, :] < torch.from_numpy(partial)[:, None]
        audio[:, : self.frame_size] = self.pending[torch.from_numpy(rows)] * keep
        codes, counts = self._advance(rows, audio, frames, force=True)
        self.pending[torch.from_numpy(rows)] = 0.0
        self.pending_n[rows] = 0
        self.finished[rows] = True
        return codes, counts

    def _advance(
        self, rows: np.ndarray, audio: torch.Tensor, frames: np.ndarray, force: bool = False
    ) -> tuple[list[torch.Tensor], list[np.ndarray]]:
        """Commit `frames[i]` frames of `audio[i]` to row `rows[i]` (rows sorted), in bounded calls.
        Returns per call: codes (max_n_q, total) of the rows with new codes, and per-row counts."""
        codes, counts = [], []
        hop = self.frame_size
        by_frame = audio.view(len(rows), -1, hop).transpose(1, 2)  # (n, hop, F)
        grid = (self.semantic.block, self.options.acoustic_lookahead) if self.speculative else None
        for sel, offset, adv in self._segments(rows, frames, grid, force):
            k = int(adv[sel].max(initial=0))
            chunk = take_frames(by_frame[torch.from_numpy(sel)], offset[sel], k)
            chunk = chunk.transpose(1, 2).reshape(int(sel.sum()), k * hop).to(self.device, self.dtype)
            c, n = self._run(rows[sel], chunk, adv[sel])
            full = np.zeros(len(rows), dtype=np.int64)
            full[sel] = n
            codes.append(c)
            counts.append(full)
        return codes, counts

    def _run(self, rows: np.ndarray, audio: torch.Tensor, adv: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """One forward pass: rows commit adv[i] frames of audio (n, K*hop). Returns new codes and counts."""
        rows_t = self._rows_tensor(rows)
        states = self.bank.take(rows_t)
        new: list[torch.Tensor | None] = [None] * len(states)
        pos, end = self.pos[rows], self.end[rows]
        frames = audio.shape[1] // self.frame_size
        step = _Step(
            x=audio[:, None, :],
            frames=frames,
            pos=pos,
            pos_new=pos + adv,
            end=end,
            adv=None if (adv == frames).all() else adv,
            end_arg=end if (end < OPEN_END).any() else None,
        )
        new[self._ac], new[self._ring_a] = self._acoustic(rows, step, states[self._ac], states[self._ring_a])
        new[self._sem], new[self._ring_s], due = self._semantic(
            rows, step, states[self._sem], states[self._ring_s]
        )
        self.bank.put(rows_t, new)
        self.pos[rows] = step.pos_new
        self.sem_blocks[rows] += due
        return self._codes(rows, end, new[self._ring_a], new[self._ring_s])

    def _acoustic(
        self, rows: np.ndarray, step: _Step, states: list[torch.Tensor], ring: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Commit the acoustic encoder; new latents go to the ring, which ends at frame `ac_done` (exact) or
        at the last whole block (speculative)."""
        new: list[torch.Tensor | None] = [None] * len(states)
        delay = self.acoustic.delay
        if step.frames:
            lat, new = self.acoustic.step(step.x, states, step.pos, step.adv, step.end_arg)
            states = [s if n is None else n for s, n in zip(states, new, strict=True)]
        if self.speculative:
            ring = self._acoustic_blocks(rows, states, step.pos_new, step.end, ring)
        elif step.frames:
            done = np.minimum(np.maximum(step.pos_new - delay, 0), step.end)
            # the ring ends at frame `done` (before any latent exists its content is never read)
            keep_from = np.minimum(done - step.pos + delay, step.pos_new - step.pos)
            ring = shift(
                torch.cat([ring, lat], dim=-1), torch.from_numpy(keep_from).to(self.device), 1, self.ring
            )
            self.ac_done[rows] = done
        return new, ring

    def _semantic(
        self, rows: np.ndarray, step: _Step, states: list[torch.Tensor], ring_s: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], torch.Tensor, np.ndarray]:
        """Commit the conv features (into the feature ring), then run the semantic blocks now due."""
        sem = self.semantic
        n_f = sem.n_feat_states
        if step.frames:
            feats, f_new = sem.features.step(step.x, states[:n_f], step.pos, step.adv, step.end_arg)
            # feature frame t sits at index t - (pos - ring) of feat_cat
            feat_cat = torch.cat([states[n_f], feats], dim=-1)
            adv_t = None if step.adv is None else torch.from_numpy(step.adv).to(self.device)
            new: list[torch.Tensor | None] = [*f_new, shift(feat_cat, adv_t, 1, sem.ring)]
        else:
            feat_cat = states[n_f]
            new = [None] * (n_f + 1)
        se_states = list(states[sem.se_slice])
        kv = states[sem.cache_index] if sem.cache else None
        due = np.maximum(0, self._blocks_due(step.pos_new, step.end, sem.lookahead) - self.sem_blocks[rows])
        if due.any():
            ring_s, se_states, kv = self._semantic_blocks(rows, feat_cat, step, due, ring_s, se_states, kv)
        return [*new, *se_states, *([kv] if sem.cache else [])], ring_s, due

    def _codes(
        self, rows: np.ndarray, end: np.ndarray, ring_a: torch.Tensor, ring_s: torch.Tensor
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Codes of the frames both branches now have: fc + residual VQ (all quantizers; sliced per slot)."""
        B, dev = self.semantic.block, self.device
        ac_done = self.ac_done[rows]
        sem_done = np.minimum(self.sem_blocks[rows] * B, end)
        counts = np.maximum(0, np.minimum(ac_done, sem_done) - self.coded[rows])
        if not counts.any():
            return torch.zeros(self.max_n_q, 0, dtype=torch.long, device=dev), counts
        rep, j = _group_arange(counts)
        t = self.coded[rows][rep] + j
        ring_end = self.ac_blocks[rows] * B if self.speculative else ac_done  # block mode: whole blocks
        ia = t - (ring_end - self.ring)[rep]
        is_ = t - (self.sem_blocks[rows] * B - self.ring)[rep]
        if ia.min() < 0 or is_.min() < 0:
            raise RuntimeError("latent ring too short (engine bug)")
        rep_t = torch.from_numpy(rep).to(dev)
        e_ac = ring_a[rep_t, :, torch.from_numpy(ia).to(dev)]  # (total, C_a)
        e_sem = ring_s[rep_t, :, torch.from_numpy(is_).to(dev)]
        emb = self.model.encode_latent(e_ac.t()[None], e_sem.t()[None])
        codes = self.model.quantize(emb, self.max_n_q)[0]  # (max_n_q, total)
        self.coded[rows] += counts
        return codes, counts

    def _blocks_due(self, pos_new: np.ndarray, end: np.ndarray, lookahead: int) -> np.ndarray:
        """Blocks whose last frame + `lookahead` frames are in; once a row ended and is all in, all blocks."""
        B = self.semantic.block
        total = np.maximum(0, (pos_new - lookahead) // B)
        last = -(-end // B)  # blocks of an ended row (huge while open)
        return np.where(pos_new >= end, last, np.minimum(total, last))

    def _acoustic_blocks(
        self,
        rows: np.ndarray,
        states: list[torch.Tensor],
        pos: np.ndarray,
        end: np.ndarray,
        ring_a: torch.Tensor,
    ) -> torch.Tensor:
        """Latents of the acoustic blocks now due. Calls stop at cuts, so a due block's cut (end + lookahead,
        or the signal's end) is where the row's state now is (`pos`): one speculative run from that state,
        zeros in and the signal taken to end there, brings its latents out. All due blocks run as one batch."""
        B, A, delay, dev = (
            self.semantic.block,
            self.options.acoustic_lookahead,
            self.acoustic.delay,
            self.device,
        )
        due = np.maximum(0, self._blocks_due(pos, end, A) - self.ac_blocks[rows])
        if not due.any():
            return ring_a
        rep, j = _group_arange(due)
        first = (self.ac_blocks[rows][rep] + j) * B
        cut = np.minimum(first + B + A, end[rep])  # the signal is taken to end here
        if (cut != np.minimum(pos[rep], end[rep])).any():
            raise RuntimeError("speculative block away from its cut (engine bug)")
        length = int((first + B + delay - pos[rep]).max())  # frames that bring the block's last latent out
        rep_t = torch.from_numpy(rep).to(dev)
        st = [s.index_select(0, rep_t) for s in states]
        zeros = torch.zeros(len(rep), 1, length * self.frame_size, device=dev, dtype=self.dtype)
        y, _ = self.acoustic.step(zeros, st, pos[rep], adv=np.zeros(len(rep), dtype=np.int64), end=cut)
        # output j of virtual row v has frame time pos - delay + j
        idx = torch.from_numpy((first - pos[rep] + delay)[:, None] + np.arange(B)[None, :]).to(dev)
        lat = y.gather(-1, idx[:, None, :].expand(-1, y.shape[1], -1))  # (n_v, C, B)
        blocks = int(due.max())
        fresh = lat.new_zeros(len(rows), y.shape[1], blocks, B)
        fresh[rep_t, :, torch.from_numpy(j).to(dev)] = lat
        ring_a = shift(
            torch.cat([ring_a, fresh.view(len(rows), y.shape[1], blocks * B)], dim=-1),
            torch.from_numpy(due * B).to(dev),
            1,
            self.ring,
        )
        self.ac_blocks[rows] += due
        self.ac_done[rows] = np.minimum(self.ac_blocks[rows] * B, end)
        return ring_a

    def _semantic_blocks(
        self,
        rows: np.ndarray,
        feat_cat: torch.Tensor,
        step: _Step,
        due: np.ndarray,
        ring_s: torch.Tensor,
        se_states: list[torch.Tensor],
        kv: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """Run every due block's window through the semantic model in one batch, then the semantic encoder
        block by block (its state chains blocks of a row). With the semantic cache, the transformer runs on
        the new frames block by block too (block r reads the keys/values that block r - 1 committed), all
        rows' r-th blocks in one batch. Returns the new semantic ring, SE states and key/value cache."""
        sem, dev = self.semantic, self.device
        B, C, S, W = sem.block, sem.left, sem.lookahead, sem.window
        pos, pos_new, end = step.pos, step.pos_new, step.end
        rep, j = _group_arange(due)
        first = (self.sem_blocks[rows][rep] + j) * B  # first frame of each due block
        t = first[:, None] - C + np.arange(W)[None, :]  # window frames
        idx = t - (pos[rep] - sem.ring)[:, None]
        valid = (t >= 0) & (t < end[rep][:, None]) & (t < pos_new[rep][:, None])
        idx = np.clip(idx, 0, feat_cat.shape[-1] - 1)
        rep_t = torch.from_numpy(rep).to(dev)
        feats = feat_cat.transpose(1, 2)[rep_t[:, None], torch.from_numpy(idx).to(dev)]  # (n_w, W, C_feat)
        valid_t = torch.from_numpy(valid).to(dev)
        if sem.cached_queries:
            hidden, kv = self._cached_blocks(rep, j, feats, valid_t, kv)  # (n_w, B + S, H)
            q0 = 0  # hidden starts at the block
        else:
            hidden = sem.window_hidden(feats, valid_t)  # (n_w, W, H)
            q0 = C
        # the semantic encoder reads `d` frames past the block: the window's, then zeros (signal ends there)
        d = sem.se.delay
        ahead = min(S, d)
        se_in = hidden[:, q0 : q0 + B + ahead] * valid_t[:, C : C + B + ahead, None].to(hidden.dtype)
        se_in = torch.nn.functional.pad(se_in.transpose(1, 2), (0, d - ahead))
        se_end = np.minimum(first + B + S, end[rep])
        for r in range(int(due.max())):
            w = np.nonzero(j == r)[0]
            rr = torch.from_numpy(rep[w]).to(dev)
            st = [s.index_select(0, rr) for s in se_states]
            lat, st_new = sem.encode_block(se_in[torch.from_numpy(w).to(dev)], st, first[w], se_end[w])
            se_states = [
                s.index_copy(0, rr, v) if v is not None else s for s, v in zip(se_states, st_new, strict=True)
            ]
            shifted = torch.cat([ring_s.index_select(0, rr), lat], dim=-1)[..., B:]
            ring_s = ring_s.index_copy(0, rr, shifted)
        return ring_s, se_states, kv

    def _cached_blocks(
        self,
        rep: np.ndarray,
        j: np.ndarray,
        feats: torch.Tensor,
        valid: torch.Tensor,
        kv: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Semantic transformer on the new frames of every due block (virtual row v: row rep[v], its j[v]-th
        block now); the block frames' keys/values are committed to the row's cache after each block."""
        sem, dev = self.semantic, self.device
        B, C = sem.block, sem.left
        h0 = sem.embed_new(feats, valid)  # independent of the cache: all blocks at once
        hidden = torch.empty_like(h0)
        for r in range(int(j.max()) + 1):
            w = torch.from_numpy(np.nonzero(j == r)[0]).to(dev)
            rr = torch.from_numpy(rep[j == r]).to(dev)
            past = None if kv is None else kv.index_select(0, rr)
            hid, kv_new = sem.cached_hidden(h0.index_select(0, w), valid.index_select(0, w), past)
            hidden[w] = hid
            if kv is not None:
                kv = kv.index_copy(0, rr, torch.cat([past, kv_new[:, :, :, :B]], dim=3)[:, :, :, -C:])
        return hidden, kv

    def _stack(self, codes: list[torch.Tensor], counts: list[np.ndarray], n_q: int) -> torch.Tensor:
        """Rows in sync: every call gave each row the same number of frames -> (B, n_q, F)."""
        parts = [c.view(c.shape[0], self.batch_size, -1).transpose(0, 1) for c in codes]
        if not parts:
            return torch.zeros(self.batch_size, n_q, 0, dtype=torch.long)
        return torch.cat(parts, dim=-1)[:, :n_q].cpu()

    def _split(
        self, rows: np.ndarray, codes: list[torch.Tensor], counts: list[np.ndarray]
    ) -> dict[int, torch.Tensor]:
        per_row: list[list[torch.Tensor]] = [[] for _ in rows]
        for c, n in zip(codes, counts, strict=True):
            c = c.cpu()
            for i, part in enumerate(torch.split(c, n.tolist(), dim=1)):
                per_row[i].append(part)
        out = {}
        for i, row in enumerate(rows):
            n_q = int(self.n_q_slot[row])
            joined = (
                torch.cat(per_row[i], dim=1) if per_row[i] else torch.zeros(self.max_n_q, 0, dtype=torch.long)
            )
            out[int(row)] = joined[:n_q].contiguous()
        return out
