"""Streaming decoder: code frames in (any number per call), waveform out, many sessions per static step.

Codes wait in a per-row buffer until a whole step of `K` frames (the preset's `decoder_block`) is there;
each step dequantizes them (sum of the row's first n_q codebook vectors, then `fc2`) and runs the DAC
decoder over them with the generic streaming layers: cached conv inputs, overlap-added transposed convs,
aligned residual branches. With the full lookahead (10 frames for the default strides) the output equals
offline `decode` for every chunking, `delay` samples behind the input. With less (`decoder_lookahead`), a
speculative tail takes the codes to end where they stop and the samples of frames [P - K - La, P - La)
come out (P = pos + K).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import time_mask
from xcodec_stream.streaming.presets import StreamingOptions, resolve
from xcodec_stream.streaming.slots import SlotEngine
from xcodec_stream.streaming.state import StateBank


class StreamingDecoder(SlotEngine):
    """Chunked X-Codec decoder over `batch_size` slots. Build it with `model.streaming_decoder(...)`.

    `step(codes)` (B, n_q, F) -> float32 (B, n_new) for rows in sync; `step_slots({slot: (n_q_i, F_i)})`
    otherwise; `flush()` / `flush_slots([...])` emit the rest (320 samples per frame in total); `reset`.
    Results are CPU tensors. `compile`: "eager" (default), "compile", "cuda-graphs" or "auto".
    """

    kind = "decoder"
    row_fields = (*SlotEngine.row_fields, "pending", "pending_q", "emitted")

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int = 1,
        latency: str | StreamingOptions = "balanced",
        compile: str | bool = "eager",
    ) -> None:
        self.options = opts = resolve(latency)
        super().__init__(model, batch_size, opts.decoder_block, compile)
        hop = self.frame_size
        self.graph = StreamGraph(chain_from_module(model.acoustic_decoder, "decoder"), in_rate=1)
        # speculate only where it is faster than exact (exact: sample t needs the codes up to t + delay)
        self.speculative = (
            opts.decoder_lookahead is not None and opts.decoder_lookahead * hop < self.graph.delay
        )
        self.lag_samples = opts.decoder_lookahead * hop if self.speculative else self.graph.delay
        if self.speculative:  # the step emits K * hop samples ending `delay - lag` into the tail
            self.graph.keep(self.graph.delay - self.lag_samples, self.step_frames)
        self.bank = StateBank(batch_size, self.graph.templates, self.device, self.dtype)
        self.num_quantizers = model.config.num_quantizers
        self.codebook_size = model.config.codebook_size
        self.pending: list[torch.Tensor] = [self._no_codes() for _ in range(batch_size)]
        self.pending_q: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(batch_size)]  # n_q per frame
        self.emitted = np.zeros(batch_size, dtype=np.int64)  # samples out so far

    # ---- properties -------------------------------------------------------------------------------
    @property
    def lookahead_frames(self) -> int:
        """Frames after frame t that must be in before all of frame t's samples are out (worst case)."""
        if self.speculative:
            return self.step_frames - 1 + self.options.decoder_lookahead
        return -(-self.graph.delay // self.frame_size)

    @property
    def lookahead_samples(self) -> int:
        """At most this many samples of the frames in are not out yet, codes arriving on the step grid."""
        return self.lookahead_frames * self.frame_size if self.speculative else self.graph.delay

    @property
    def latency_ms(self) -> float:
        """How far the output lags the codes, in whole frames, codes arriving on the step grid (a client that
        sends codes off the grid also waits for the step to fill, up to K - 1 frames)."""
        return 1000.0 * (self.lag_samples // self.frame_size) * self.frame_size / self.sample_rate

    def _dummy_inputs(self, batch: int) -> list[torch.Tensor]:
        k, dev = self.step_frames, self.device
        codes = torch.zeros(batch, self.num_quantizers, k, dtype=torch.long, device=dev)
        return [codes, torch.ones(batch, k, dtype=torch.long, device=dev)]

    @property
    def warmup(self) -> int:
        return self.graph.warmup

    def _reset_rows(self, rows: np.ndarray) -> None:
        for r in rows:
            self.pending[r] = self._no_codes()
            self.pending_q[r] = np.zeros(0, np.int64)
        self.emitted[rows] = 0

    @torch.inference_mode()
    def reset(self, slot: int | None = None, lead: int = 0) -> None:
        """Start a fresh session in `slot` (None: every slot). `lead`: the row starts `lead` frames before
        time 0 (silence, never output), so that its steps line up with codes that come out of an encoder in
        groups ending off the step grid (`StreamingEncoder.lead_for`)."""
        if not isinstance(lead, int) or not 0 <= lead < self.step_frames:
            raise ValueError(f"lead must be an integer in 0..{self.step_frames - 1}, got {lead!r}")
        super().reset(slot)
        rows = np.arange(self.batch_size) if slot is None else np.array([self._slot(slot)])
        self.pos[rows] = -lead
        for r in rows:  # the lead's frames: before time 0, so the step's mask zeroes them
            self.pending[r] = torch.zeros(self.num_quantizers, lead, dtype=torch.long)
            self.pending_q[r] = np.zeros(lead, np.int64)

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
        self._check_sync(rows, "step_slots({slot: codes})")
        out = self.step_slots(dict(enumerate(codes)))
        return torch.stack([out[r] for r in rows])

    @torch.inference_mode()
    def step_slots(self, chunks: dict[int, object]) -> dict[int, torch.Tensor]:
        """{slot: int codes (n_q_i, F_i)} -> {slot: float32 (n_i,)}; slots may differ in n_q and F."""
        slots = [self._slot(s) for s in chunks]
        if len(set(slots)) != len(slots):
            raise ValueError("a slot appears twice")
        self._open(slots)
        parts = [self._as_codes(chunks[s], 2) for s in chunks]
        for s, c in zip(slots, parts, strict=True):
            if c.shape[1]:
                full = c
                if c.shape[0] < self.num_quantizers:  # fewer quantizers: the rest are never read (n_q)
                    full = torch.zeros(self.num_quantizers, c.shape[1], dtype=torch.long)
                    full[: c.shape[0]] = c
                self.pending[s] = torch.cat([self.pending[s], full], dim=1)
                self.pending_q[s] = np.concatenate([self.pending_q[s], np.full(c.shape[1], c.shape[0])])
        return self._drain(sorted(slots), flushing=False)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End every row's stream -> float32 (B, n) the remaining samples (total 320 per frame)."""
        rows = np.arange(self.batch_size)
        self._open(rows)
        self._check_sync(rows, "flush_slots([...])")
        out = self.flush_slots(list(rows))
        return torch.stack([out[r] for r in rows])

    @torch.inference_mode()
    def flush_slots(self, slots: list[int]) -> dict[int, torch.Tensor]:
        """End the streams of `slots` -> {slot: remaining samples}; a flushed slot is finished until reset."""
        rows = sorted({self._slot(s) for s in slots})
        self._open(rows)
        if not rows:
            return {}
        for r in rows:
            self.end[r] = self.pos[r] + self.pending[r].shape[1]
        out = self._drain(rows, flushing=True)
        for r in rows:
            self.finished[r] = True
        return out

    # ---- internals ---------------------------------------------------------------------------------
    def _no_codes(self) -> torch.Tensor:
        return torch.zeros(self.num_quantizers, 0, dtype=torch.long)

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

    def _due(self, r: int, flushing: bool) -> bool:
        if flushing:  # until every sample of the signal is out
            return self.emitted[r] < self.end[r] * self.frame_size
        return self.pending[r].shape[1] >= self.step_frames

    def _take(self, due: np.ndarray) -> list[torch.Tensor]:
        K = self.step_frames
        codes = torch.zeros(len(due), self.num_quantizers, K, dtype=torch.long)
        n_q = torch.zeros(len(due), K, dtype=torch.long)  # past the pending codes: no codebook
        for i, r in enumerate(due):  # assembling input, not compute
            take = self.pending[r][:, :K]
            codes[i, :, : take.shape[1]] = take
            n_q[i, : take.shape[1]] = torch.from_numpy(self.pending_q[r][:K])
            self.pending[r] = self.pending[r][:, K:]
            self.pending_q[r] = self.pending_q[r][K:]
        return [codes, n_q]

    def _join(self, r: int, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.zeros(0)

    def _advance(self, rows: np.ndarray, codes: torch.Tensor, n_q: torch.Tensor) -> list[torch.Tensor]:
        hop, K = self.frame_size, self.step_frames
        t0 = self.pos[rows] * hop - self.lag_samples  # time of the step's first output sample
        end = self.end[rows].copy()
        y = self._run(rows, [codes.to(self.device), n_q.to(self.device)], end).float().cpu()
        lo = np.clip(np.maximum(self.emitted[rows], 0) - t0, 0, K * hop)
        hi = np.clip(end * hop - t0, lo, K * hop)
        self.emitted[rows] = np.maximum(self.emitted[rows], t0 + hi)
        return [y[i, lo[i] : hi[i]] for i in range(len(rows))]

    def _core(
        self,
        codes: torch.Tensor,
        n_q: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        end: torch.Tensor,
        masking: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The static step: codes (b, Q, K), n_q (b, K) -> samples (b, K * hop) from time pos*hop - lag."""
        K = self.step_frames
        embed = self.model.quantizer.embed  # (Q, codebook, D)
        total = None
        for q in range(self.num_quantizers):  # in order, as offline dequantize sums them
            e = F.embedding(codes[:, q], embed[q]) * (n_q > q)[..., None].to(embed.dtype)
            total = e if total is None else total + e
        latent = self.model.fc2(total).transpose(1, 2)  # (b, C, K)
        # outside the signal the decoder's input is zero (offline zero padding), not fc2's bias
        if masking:
            latent = latent * time_mask(pos, K, end).to(latent.dtype)
        stop = torch.minimum(pos + K, end) if self.speculative else end  # speculating: the codes end here
        if self.speculative:  # outputs from time pos * hop - lag
            y, new = self.graph.step_kept(latent, state, pos, stop, masking=masking)
            return y[:, 0], new
        y, new = self.graph.step(latent, state, pos, stop, frames=K, masking=masking)
        return y[:, 0], new  # exact: the outputs of the committed frames, from time pos * hop - delay
