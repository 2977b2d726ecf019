"""Streaming encoder: waveform chunks of any length in, code frames out, many sessions in one static step.

Input waits in a per-row buffer until a whole step of `K` frames (the preset's `semantic_block`) is there;
every step then commits K frames to each due row in one batched pass of fixed shape:

- acoustic (DAC) encoder: the committed frames, and unless it is exact a speculative tail that takes the
  signal to end where the input stops; latents of frames [P - K - La, P - La) (P = pos + K, La the
  acoustic lookahead, or the encoder's whole receptive field when exact);
- semantic branch (`SemanticStream`): latents of frames [P - K - S, P - S) (S = semantic lookahead);
- the branch with less lookahead waits in a short ring until the other has the same frames; then `fc` and
  the residual VQ give the codes of frames [P - K - L, P - L), L = max(La, S).

Codes depend on the step grid, never on how the caller chunks the signal. See docs/STREAMING.md.
"""

from __future__ import annotations

import numpy as np
import torch

from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import OPEN_END
from xcodec_stream.streaming.presets import StreamingOptions, resolve
from xcodec_stream.streaming.semantic import SemanticStream
from xcodec_stream.streaming.slots import SlotEngine
from xcodec_stream.streaming.state import StateBank


def _as_pcm(pcm: object, dims: int) -> torch.Tensor:
    t = pcm if isinstance(pcm, torch.Tensor) else torch.as_tensor(np.asarray(pcm))
    if t.dim() != dims:
        shape = "(batch, samples)" if dims == 2 else "(samples,)"
        raise ValueError(f"pcm must have shape {shape}, got {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"pcm must be floating point (float32 in [-1, 1]), got {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float32)


class StreamingEncoder(SlotEngine):
    """Chunked X-Codec encoder over `batch_size` slots. Build it with `model.streaming_encoder(...)`.

    `step(pcm)` (B, n) float32 -> int64 codes (B, n_q, F_new) for rows in sync; `step_slots({slot: pcm})`
    for rows at different positions; `flush()` / `flush_slots([...])` end streams (the last partial frame
    zero-padded); `reset(slot)` starts a new session in a slot. Results are CPU tensors.
    `compile`: "eager" (default), "compile" (inductor), "cuda-graphs", or "auto".
    """

    kind = "encoder"
    row_fields = (*SlotEngine.row_fields, "pending", "n_q_slot")

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int = 1,
        bandwidth: float | None = None,
        latency: str | StreamingOptions = "balanced",
        compile: str | bool = "eager",
    ) -> None:
        self.options = opts = resolve(latency)
        super().__init__(model, batch_size, opts.semantic_block, compile)
        hop, K = self.frame_size, self.step_frames
        self.acoustic = StreamGraph(chain_from_module(model.acoustic_encoder, "acoustic"), hop)
        # exact: latents straight from the committed stream; otherwise a speculative tail per step
        self.speculative = (
            opts.acoustic_lookahead is not None and opts.acoustic_lookahead < self.acoustic.delay
        )
        self.acoustic_lag = opts.acoustic_lookahead if self.speculative else self.acoustic.delay
        if self.speculative:  # the step uses K latents ending `delay - lag` into the tail
            self.acoustic.keep(self.acoustic.delay - self.acoustic_lag, self.step_frames)
        self.semantic = SemanticStream(
            model, K, opts.semantic_left_context, opts.semantic_lookahead, cache=opts.semantic_cache
        )
        self.lag = max(self.acoustic_lag, opts.semantic_lookahead)  # L: codes of frames [P - K - L, P - L)
        ac_channels = model.acoustic_encoder.conv2.out_channels
        sem_channels = model.encoder_semantic.out_channels
        templates = {
            **self.acoustic.templates,
            **self.semantic.templates,
            # the branch with less lookahead waits here for the other
            "ring.acoustic": torch.zeros(ac_channels, self.lag - self.acoustic_lag),
            "ring.semantic": torch.zeros(sem_channels, self.lag - opts.semantic_lookahead),
        }
        self.bank = StateBank(batch_size, templates, self.device, self.dtype)
        model.quantizer.prepare()
        self.pending: list[torch.Tensor] = [torch.zeros(0) for _ in range(batch_size)]
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
        """Frames after frame t the acoustic encoder waits for (worst case within a step)."""
        return self.step_frames - 1 + self.acoustic_lag

    @property
    def lookahead_frames(self) -> int:
        """Frames after frame t whose samples must be in before frame t's code is out (worst case)."""
        return self.step_frames - 1 + self.lag

    @property
    def lookahead_samples(self) -> int:
        return self.lookahead_frames * self.frame_size

    @property
    def latency_ms(self) -> float:
        """Algorithmic latency: from the last sample of a frame entering to its code being out."""
        return 1000.0 * self.lookahead_samples / self.sample_rate

    def lead_for(self, decoder_step: int) -> int:
        """Codes come out in groups ending at frames P - L (P on the step grid): the lead (`reset(slot,
        lead=...)`) that makes a decoder of step `decoder_step` step exactly when they arrive (possible when
        it divides this encoder's step; else 0: codes then wait for the step to fill)."""
        return self.lag % decoder_step if self.step_frames % decoder_step == 0 else 0

    def set_bandwidth(self, slot: int, bandwidth: float | None) -> None:
        """Codes of `slot` keep the first n_q(bandwidth) quantizers (RVQ prefixes are exact)."""
        self.n_q_slot[self._slot(slot)] = self.model.num_quantizers_for_bandwidth(bandwidth)

    def _reset_rows(self, rows: np.ndarray) -> None:
        for r in rows:
            self.pending[r] = torch.zeros(0)
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
        self._check_sync(rows, "step_slots({slot: pcm})")
        out = self.step_slots(dict(enumerate(pcm)))
        return torch.stack([out[r] for r in rows])[:, :n_q]

    @torch.inference_mode()
    def step_slots(self, chunks: dict[int, object]) -> dict[int, torch.Tensor]:
        """{slot: 1-D float32 pcm of any length} -> {slot: int64 (n_q_slot, F_i)}; one batched step for all
        due slots at a time; slots not given do not move."""
        slots = [self._slot(s) for s in chunks]
        if len(set(slots)) != len(slots):
            raise ValueError("a slot appears twice")
        self._open(slots)
        pcms = [_as_pcm(chunks[s], 1) for s in chunks]
        for s, pcm in zip(slots, pcms, strict=True):
            if pcm.numel():
                self.pending[s] = torch.cat([self.pending[s], pcm])
        return self._drain(sorted(slots), flushing=False)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End every row's stream: the remaining frames (end zero-padded to a whole frame) -> (B, n_q, F)."""
        rows = np.arange(self.batch_size)
        self._open(rows)
        n_q = self._uniform_n_q(rows)
        self._check_sync(rows, "flush_slots([...])")
        out = self.flush_slots(list(rows))
        return torch.stack([out[r] for r in rows])[:, :n_q]

    @torch.inference_mode()
    def flush_slots(self, slots: list[int]) -> dict[int, torch.Tensor]:
        """End the streams of `slots`: {slot: remaining codes}. A flushed slot is finished until reset."""
        rows = sorted({self._slot(s) for s in slots})
        self._open(rows)
        if not rows:
            return {}
        hop = self.frame_size
        for r in rows:
            n = self.pending[r].numel()
            self.end[r] = self.pos[r] + -(-n // hop)
        out = self._drain(rows, flushing=True)
        for r in rows:
            self.pending[r] = torch.zeros(0)
            self.finished[r] = True
        return out

    # ---- internals ---------------------------------------------------------------------------------
    def _uniform_n_q(self, rows: np.ndarray) -> int:
        n_q = self.n_q_slot[rows]
        if not (n_q == n_q[0]).all():
            raise ValueError("slots have different bandwidths; use step_slots / flush_slots")
        return int(n_q[0])

    def _due(self, r: int, flushing: bool) -> bool:
        if flushing:  # until the last frame's code is out
            return self.end[r] > 0 and self.pos[r] - self.lag < self.end[r]
        return self.pending[r].numel() >= self.step_frames * self.frame_size

    def _take(self, due: np.ndarray) -> list[torch.Tensor]:
        span = self.step_frames * self.frame_size
        x = torch.zeros(len(due), span)
        for i, r in enumerate(due):  # assembling input, not compute
            take = self.pending[r][:span]
            x[i, : take.numel()] = take
            self.pending[r] = self.pending[r][span:]
        return [x]

    def _join(self, r: int, parts: list[torch.Tensor]) -> torch.Tensor:
        if not parts:  # most calls of a server's tick only buffer input
            return torch.zeros(self.n_q_slot[r], 0, dtype=torch.long)
        codes = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return codes[: self.n_q_slot[r]].contiguous()

    def _advance(self, rows: np.ndarray, x: torch.Tensor) -> list[torch.Tensor]:
        """One static step for `rows`; returns each row's new codes (max_n_q, F_i) on the CPU."""
        first = self.pos[rows] - self.lag  # frame of codes[..., 0]: P - K - L
        end = self.end[rows].copy()
        codes = self._run(rows, [x.to(self.device, self.dtype)], end).cpu()
        lo = np.clip(-first, 0, self.step_frames)
        hi = np.clip(end - first, lo, self.step_frames)
        return [codes[i, :, lo[i] : hi[i]] for i in range(len(rows))]

    def _dummy_inputs(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, self.step_frames * self.frame_size, device=self.device, dtype=self.dtype)]

    @property
    def warmup(self) -> int:
        return max(self.acoustic.warmup, self.semantic.warmup)

    def _core(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        end: torch.Tensor,
        masking: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The static step: x (b, K * hop) -> codes (b, max_n_q, K) of frames [P - K - L, P - L), new state."""
        K = self.step_frames
        new: dict[str, torch.Tensor] = {}
        p = pos + K
        # speculating, the signal is taken to end where the input stops: the acoustic lookahead's guess
        stop = torch.minimum(p, end) if self.speculative else end
        if self.speculative:  # latents of frames from pos - lag on
            lat, a_new = self.acoustic.step_kept(x[:, None], state, pos, stop, masking=masking)
        else:  # exact: latents of the committed frames, from frame pos - delay
            lat, a_new = self.acoustic.step(x[:, None], state, pos, stop, frames=K, masking=masking)
        new.update(a_new)
        lat_a = self._wait(lat, state, new, "ring.acoustic")
        lat_s = self._wait(self.semantic.step(x, state, new, pos, end, masking), state, new, "ring.semantic")
        emb = self.model.encode_latent(lat_a, lat_s)
        return self.model.quantize(emb, self.max_n_q), new

    @staticmethod
    def _wait(lat: torch.Tensor, state: dict, new: dict, key: str) -> torch.Tensor:
        """Latents of frames lagging by less than L go through a ring that delays them to [P - K - L, P - L)."""
        ring = state[key]
        if not ring.shape[-1]:
            new[key] = ring
            return lat
        cat = torch.cat([ring, lat], dim=-1)
        new[key] = cat[..., lat.shape[-1] :]
        return cat[..., : lat.shape[-1]]


__all__ = ["OPEN_END", "StreamingEncoder"]
