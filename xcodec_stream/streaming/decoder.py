"""Streaming decoder: code frames in (any number per step), waveform out, many sessions per forward pass.

Codes are dequantized frame by frame (sum of the row's first n_q codebook vectors, then `fc2`), and the
DAC decoder is streamed with the generic layers: cached conv inputs, overlap-added transposed convs,
aligned residual branches. With the full lookahead (10 frames for the default strides) the concatenated
output equals offline `decode` for every chunking. With less, samples come out per `decoder_block`
frames, each block from a speculative run that takes the codes to end `decoder_lookahead` frames after it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import OPEN_END
from xcodec_stream.streaming.presets import StreamingOptions, resolve
from xcodec_stream.streaming.slots import SlotEngine, take_frames
from xcodec_stream.streaming.state import StateBank


class StreamingDecoder(SlotEngine):
    """Chunked X-Codec decoder over `batch_size` slots. Build it with `model.streaming_decoder(...)`.

    `step(codes)` (B, n_q, F) -> float32 (B, n_new) for rows in sync; `step_slots({slot: (n_q_i, F_i)})`
    otherwise; `flush()` / `flush_slots([...])` emit the rest (320 samples per frame in total); `reset`.
    Results are CPU tensors.
    """

    kind = "decoder"
    row_fields = (*SlotEngine.row_fields, "emitted")

    def __init__(
        self, model: torch.nn.Module, batch_size: int = 1, latency: str | StreamingOptions = "balanced"
    ) -> None:
        super().__init__(model, batch_size)
        self.options = opts = resolve(latency)
        hop = self.frame_size
        self.graph = StreamGraph(chain_from_module(model.acoustic_decoder), in_rate=1)
        # speculate only where it is faster than exact (exact: the first sample of frame t needs t + delay//hop);
        # that also keeps every block within reach of the row's state
        self.speculative = (
            opts.decoder_lookahead is not None
            and opts.decoder_block - 1 + opts.decoder_lookahead < self.graph.delay // hop
        )
        self.block = opts.decoder_block
        self.bank = StateBank(batch_size, self.graph.templates, self.device, self.dtype)
        self.emitted = np.zeros(batch_size, dtype=np.int64)  # samples out so far
        self.num_quantizers = model.config.num_quantizers
        self.codebook_size = model.config.codebook_size

    # ---- properties -------------------------------------------------------------------------------
    @property
    def lookahead_frames(self) -> int:
        """Frames after frame t that must be in before all of frame t's samples are out (worst case)."""
        if self.speculative:
            return self.block - 1 + self.options.decoder_lookahead
        return -(-self.graph.delay // self.frame_size)

    @property
    def lookahead_samples(self) -> int:
        """At most this many samples of the frames in are not out yet (exact: always exactly this many)."""
        return self.lookahead_frames * self.frame_size if self.speculative else self.graph.delay

    @property
    def latency_ms(self) -> float:
        """From frame t's code entering to the first sample of frame t coming out (worst case)."""
        frames = self.lookahead_frames if self.speculative else self.graph.delay // self.frame_size
        return 1000.0 * frames * self.frame_size / self.sample_rate

    def _reset_rows(self, rows: np.ndarray) -> None:
        self.emitted[rows] = 0

    # ---- public steps -----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, codes: object) -> torch.Tensor:
        """(B, n_q, F) int codes, every row in sync -> float32 (B, n_new) samples now final."""
        codes = self._as_codes(codes, 3)
        if codes.shape[0] != self.batch_size:
            raise ValueError(
                f"codes have {codes.shape[0]} rows, this decoder has batch_size {self.batch_size}"
            )
        rows = np.arange(self.batch_size)
        self._open(rows)
        if not ((self.pos == self.pos[0]).all() and (self.emitted == self.emitted[0]).all()):
            raise ValueError(
                "the rows are not in sync (different stream positions); use step_slots({slot: codes})"
            )
        frames = codes.shape[2]
        if frames == 0:
            return torch.zeros(self.batch_size, 0)
        n_q = np.full(self.batch_size, codes.shape[1], dtype=np.int64)
        return self._stack(self._advance(rows, codes, n_q, np.full(self.batch_size, frames)))

    @torch.inference_mode()
    def step_slots(self, chunks: dict[int, object]) -> dict[int, torch.Tensor]:
        """{slot: int codes (n_q_i, F_i)} -> {slot: float32 (n_i,)}; slots may differ in n_q and F."""
        slots = [self._slot(s) for s in chunks]
        if len(set(slots)) != len(slots):
            raise ValueError("a slot appears twice")
        self._open(slots)
        if not slots:
            return {}
        parts = [self._as_codes(chunks[s], 2) for s in chunks]
        order = np.argsort(slots)
        rows = np.array(slots, dtype=np.int64)[order]
        parts = [parts[i] for i in order]
        frames = np.array([p.shape[1] for p in parts], dtype=np.int64)
        n_q = np.array([p.shape[0] for p in parts], dtype=np.int64)
        codes = torch.zeros(len(rows), self.num_quantizers, int(frames.max()), dtype=torch.long)
        for i, p in enumerate(parts):  # assembling input, not compute
            codes[i, : p.shape[0], : p.shape[1]] = p
        return self._split(rows, self._advance(rows, codes, n_q, frames))

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End every row's stream -> float32 (B, n) the remaining samples (total 320 per frame)."""
        rows = np.arange(self.batch_size)
        self._open(rows)
        if not ((self.pos == self.pos[0]).all() and (self.emitted == self.emitted[0]).all()):
            raise ValueError("the rows are not in sync (different stream positions); use flush_slots([...])")
        return self._stack(self._flush_rows(rows))

    @torch.inference_mode()
    def flush_slots(self, slots: list[int]) -> dict[int, torch.Tensor]:
        """End the streams of `slots` -> {slot: remaining samples}; a flushed slot is finished until reset."""
        rows = np.array(sorted({self._slot(s) for s in slots}), dtype=np.int64)
        self._open(rows)
        if not len(rows):
            return {}
        return self._split(rows, self._flush_rows(rows))

    # ---- internals ---------------------------------------------------------------------------------
    def _as_codes(self, codes: object, dims: int) -> torch.Tensor:
        t = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
        if t.dim() != dims:
            shape = "(batch, n_q, frames)" if dims == 3 else "(n_q, frames)"
            raise ValueError(f"codes must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"codes must be integers, got {t.dtype}")
        n_q = t.shape[-2]
        if not 1 <= n_q <= self.num_quantizers:
            raise ValueError(f"codes have {n_q} quantizers; this model has 1..{self.num_quantizers}")
        t = t.detach().to("cpu", torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.codebook_size):
            raise ValueError(f"codes must be in 0..{self.codebook_size - 1}")
        return t

    def _flush_rows(self, rows: np.ndarray) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        self.end[rows] = self.pos[rows]
        # exact: drain the delay with zero frames; speculative: the last blocks run from the state at the end
        extra = 0 if self.speculative else -(-self.graph.delay // self.frame_size)
        zeros = torch.zeros(len(rows), self.num_quantizers, max(extra, 1), dtype=torch.long)
        n_q = np.zeros(len(rows), dtype=np.int64)  # no codebook: zero latent past the end
        outs = self._advance(rows, zeros, n_q, np.full(len(rows), extra), force=True)
        self.finished[rows] = True
        return outs

    def _advance(
        self, rows: np.ndarray, codes: torch.Tensor, n_q: np.ndarray, frames: np.ndarray, force: bool = False
    ) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
        """Commit `frames[i]` frames of `codes[i]` to row `rows[i]`, in bounded calls. Returns per call the
        output (n, T) and, per row, the first and last+1 index of its new samples in it."""
        outs = []
        grid = (self.block, self.options.decoder_lookahead) if self.speculative else None
        for sel, offset, adv in self._segments(rows, frames, grid, force):
            k = int(adv[sel].max(initial=0))
            chunk = take_frames(codes[torch.from_numpy(sel)], offset[sel], k)
            out, lo, hi = self._run(rows[sel], chunk, n_q[sel], adv[sel])
            full_lo = np.zeros(len(rows), dtype=np.int64)
            full_hi = np.zeros(len(rows), dtype=np.int64)
            full_lo[sel], full_hi[sel] = lo, hi
            rows_out = torch.zeros(len(rows), out.shape[-1], dtype=out.dtype)
            rows_out[torch.from_numpy(np.nonzero(sel)[0])] = out
            outs.append((rows_out, full_lo, full_hi))
        return outs

    def _latent(self, codes: torch.Tensor, n_q: np.ndarray) -> torch.Tensor:
        """(n, Q, K) codes, per-row n_q -> (n, C, K): fc2 of the sum of each row's first n_q vectors."""
        embed = self.model.quantizer.embed
        codes = codes.to(self.device)
        total = torch.full((), 0.0, device=self.device, dtype=embed.dtype)
        for q in range(int(n_q.max(initial=0))):
            e = F.embedding(codes[:, q], embed[q])
            if (n_q <= q).any():  # rows with fewer quantizers add nothing (x + 0 == x exactly)
                e = e * torch.from_numpy(n_q > q).to(self.device, e.dtype)[:, None, None]
            total = total + e
        if total.dim() == 0:
            total = total.expand(codes.shape[0], codes.shape[2], embed.shape[-1])
        return self.model.fc2(total).transpose(1, 2)

    def _run(
        self, rows: np.ndarray, codes: torch.Tensor, n_q: np.ndarray, adv: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        hop, dev = self.frame_size, self.device
        k = codes.shape[2]
        pos, end = self.pos[rows], self.end[rows]
        ended = end < OPEN_END
        rows_t = self._rows_tensor(rows)
        states = self.bank.take(rows_t)
        y = None
        if k:
            latent = self._latent(codes, n_q)
            if ended.any():  # past a row's end the decoder's input is zero (offline zero padding)
                past = torch.from_numpy(pos[:, None] + np.arange(k)[None, :] >= end[:, None]).to(dev)
                latent = latent.masked_fill(past[:, None, :], 0.0)
            adv_arg = None if (adv == k).all() else adv
            y, new = self.graph.step(latent, states, pos, adv_arg, end if ended.any() else None)
            self.bank.put(rows_t, new)
            states = [s if n is None else n for s, n in zip(states, new, strict=True)]
        pos_new = pos + adv
        self.pos[rows] = pos_new
        if self.speculative:
            return self._blocks(states, pos_new, end, rows)
        # output j of this call has time pos*hop - delay + j; emit the final samples inside [0, end*hop)
        t0 = pos * hop - self.graph.delay
        stop = np.minimum(pos_new * hop - self.graph.delay, end * hop)
        lo = np.clip(self.emitted[rows] - t0, 0, None)
        hi = np.maximum(stop - t0, lo)
        self.emitted[rows] = np.maximum(self.emitted[rows], t0 + hi)
        return y[:, 0].float().cpu(), lo, hi

    def _blocks(
        self, states: list[torch.Tensor], pos: np.ndarray, end: np.ndarray, rows: np.ndarray
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """Samples of the blocks now due. Calls stop at cuts, so a due block's cut (its end + lookahead, or
        the codes' end) is where the row's state now is (`pos`): one speculative run from that state, with
        the codes taken to end there, brings its samples out. All due blocks run as one batch."""
        hop, dev, B, L = self.frame_size, self.device, self.block, self.options.decoder_lookahead
        delay = self.graph.delay
        done = self.emitted[rows] // (B * hop)  # blocks out
        total = np.where(pos >= end, -(-end // B), np.maximum(0, (pos - L) // B))
        due = np.maximum(0, total - done)
        empty = np.zeros(len(rows), np.int64)
        if not due.any():
            return torch.zeros(len(rows), 0), empty, empty
        rep = np.repeat(np.arange(len(rows)), due)
        slot = np.arange(len(rep)) - (np.cumsum(due) - due)[rep]
        first = (done[rep] + slot) * B
        cut = np.minimum(first + B + L, end[rep])
        if (cut != np.minimum(pos[rep], end[rep])).any():
            raise RuntimeError("speculative block away from its cut (engine bug)")
        length = int((first + B - pos[rep]).max()) + -(-delay // hop)
        rep_t = torch.from_numpy(rep).to(dev)
        st = [s.index_select(0, rep_t) for s in states]
        zeros = torch.zeros(
            len(rep), self.graph.chain.children[0].module.in_channels, length, device=dev, dtype=self.dtype
        )
        y, _ = self.graph.step(zeros, st, pos[rep], adv=np.zeros(len(rep), dtype=np.int64), end=cut)
        # sample j of virtual row v has time pos*hop - delay + j; the block is [first*hop, (first+B)*hop)
        idx = torch.from_numpy(((first - pos[rep]) * hop + delay)[:, None] + np.arange(B * hop)[None, :]).to(
            dev
        )
        blocks = y[:, 0].gather(-1, idx).float().cpu()  # (n_v, B*hop), zeros past the end
        # per row: its due blocks in order, trimmed at its end
        out = torch.zeros(len(rows), int(due.max()) * B * hop)
        out.view(len(rows), -1, B * hop)[torch.from_numpy(rep), torch.from_numpy(slot)] = blocks
        hi = np.minimum(due * B * hop, np.maximum(end * hop - done * B * hop, 0))
        self.emitted[rows] = (done + due) * B * hop
        return out, empty, hi

    def _stack(self, outs: list[tuple[torch.Tensor, np.ndarray, np.ndarray]]) -> torch.Tensor:
        """Rows in sync: the same range of every call's output is new for every row."""
        parts = [out[:, lo[0] : hi[0]] for out, lo, hi in outs]
        return torch.cat(parts, dim=-1) if parts else torch.zeros(self.batch_size, 0)

    def _split(
        self, rows: np.ndarray, outs: list[tuple[torch.Tensor, np.ndarray, np.ndarray]]
    ) -> dict[int, torch.Tensor]:
        per_row: list[list[torch.Tensor]] = [[] for _ in rows]
        for out, lo, hi in outs:
            for i in range(len(rows)):
                per_row[i].append(out[i, lo[i] : hi[i]])
        return {int(r): torch.cat(p) if p else torch.zeros(0) for r, p in zip(rows, per_row, strict=True)}
