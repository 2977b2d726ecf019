"""Slot bookkeeping shared by the streaming encoder and decoder: counters per row, slot checks, sub-calls."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from xcodec_stream.streaming.layers import OPEN_END
from xcodec_stream.streaming.state import StateBank

# Frames one internal call advances a row by at most: bounds the work (and memory) of one forward pass;
# a longer chunk is split into several calls (the result does not depend on the split).
MAX_FRAMES_PER_CALL = 50


class SlotEngine:
    """Rows of a fixed-capacity batch, one per session ("slot"), with host-side counters.

    Counters (numpy int64, one entry per row): `pos` frames committed, `end` the row's length in frames
    once flushed (OPEN_END before), `finished` after a flush until the slot is reset.
    """

    kind = "engine"
    # Per-row host arrays/tensors a step changes besides the state bank (subclasses add theirs): what
    # `atomic` saves and restores.
    row_fields: tuple[str, ...] = ("pos", "end", "finished")
    # Steps run under `atomic(slots)` leave their slots as they were when they raise (the daemon then retries
    # the rest of a batch after an out-of-memory error).
    atomic_steps = True

    def __init__(self, model: torch.nn.Module, batch_size: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self.device = model.device
        self.dtype = model.dtype
        self.frame_size = model.hop_length
        self.sample_rate = model.sample_rate
        self.pos = np.zeros(batch_size, dtype=np.int64)
        self.end = np.full(batch_size, OPEN_END, dtype=np.int64)
        self.finished = np.zeros(batch_size, dtype=bool)
        self.bank: StateBank

    # ---- slots ------------------------------------------------------------------------------------
    def _slot(self, slot: object) -> int:
        if (
            isinstance(slot, bool)
            or not isinstance(slot, (int, np.integer))
            or not 0 <= slot < self.batch_size
        ):
            raise ValueError(f"slot must be an integer in 0..{self.batch_size - 1}, got {slot!r}")
        return int(slot)

    def _open(self, slots: Iterable[int]) -> None:
        for s in slots:
            if self.finished[s]:
                raise ValueError(f"slot {s} was flushed (its stream ended); reset({s}) starts a new one")

    def _rows_tensor(self, rows: np.ndarray) -> torch.Tensor | None:
        """None when `rows` is every row in order (no gather/scatter needed)."""
        if len(rows) == self.batch_size and np.array_equal(rows, np.arange(self.batch_size)):
            return None
        return torch.from_numpy(rows).to(self.device)

    @torch.inference_mode()  # the states are inference tensors once a step ran
    def reset(self, slot: int | None = None) -> None:
        """Start a fresh session in `slot` (None: every slot); the other slots keep running untouched."""
        if slot is None:
            rows = np.arange(self.batch_size)
            self.bank.reset(None)
        else:
            rows = np.array([self._slot(slot)])
            self.bank.reset(torch.from_numpy(rows).to(self.device))
        self.pos[rows] = 0
        self.end[rows] = OPEN_END
        self.finished[rows] = False
        self._reset_rows(rows)

    @contextmanager
    def atomic(self, slots: Iterable[int]) -> Iterator[None]:
        """Everything inside runs all or nothing for `slots`: if it raises, their state (bank rows and host
        counters) goes back to what it was on entry, so the same input can be given again. Costs one copy of
        those rows' state (5.3 MB a session for the full model at `balanced`)."""
        rows = np.array(sorted({self._slot(s) for s in slots}), dtype=np.int64)
        with torch.inference_mode():  # the bank holds inference tensors once a step ran
            rows_t = torch.from_numpy(rows).to(self.device)
            saved_bank = self.bank.take(rows_t) if len(rows) else []
            saved = {}
            for name in self.row_fields:
                value = getattr(self, name)
                saved[name] = (
                    value[torch.from_numpy(rows)].clone() if torch.is_tensor(value) else value[rows].copy()
                )
        try:
            yield
        except BaseException:
            with torch.inference_mode():
                if len(rows):
                    self.bank.put(rows_t, saved_bank)
                for name, value in saved.items():
                    target = getattr(self, name)
                    target[torch.from_numpy(rows) if torch.is_tensor(target) else rows] = value
            raise

    def _reset_rows(self, rows: np.ndarray) -> None:
        """Engine-specific counters of `rows` back to a fresh session."""

    def state_bytes(self) -> int:
        """Bytes held by per-session state (constant while streams run)."""
        return self.bank.nbytes()

    def _segments(
        self, rows: np.ndarray, frames: np.ndarray, grid: tuple[int, int] | None = None, force: bool = False
    ) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Split per-row frame counts into internal calls: yields (selected rows mask, per-row offset into the
        input, per-row frames to commit). At most MAX_FRAMES_PER_CALL frames per call; with `grid` =
        (block, lookahead), a call also stops at each row's next cut `(k + 1) * block + lookahead`, so that
        a speculative block starts from the state at its cut. `force`: one call even if nothing advances
        (a flush). Reads `self.pos` at each step: the caller commits between steps."""
        remaining = frames.astype(np.int64).copy()
        offset = np.zeros_like(remaining)
        first = True
        while remaining.any() or (force and first):
            adv = np.minimum(remaining, MAX_FRAMES_PER_CALL)
            if grid is not None:
                block, ahead = grid
                pos = self.pos[rows]
                nxt = np.maximum(block + ahead, ((pos - ahead) // block + 1) * block + ahead)
                adv = np.minimum(adv, nxt - pos)
            sel = np.ones(len(rows), dtype=bool) if (force and first) else adv > 0
            yield sel, offset.copy(), adv
            offset += adv
            remaining -= adv
            first = False


def take_frames(x: torch.Tensor, offset: np.ndarray, count: int) -> torch.Tensor:
    """x (n, ..., F) -> (n, ..., count): frames offset[i] .. offset[i] + count of each row (clipped at F)."""
    if count == 0:
        return x[..., :0]
    idx = np.clip(offset[:, None] + np.arange(count)[None, :], 0, max(x.shape[-1] - 1, 0))
    idx_t = torch.from_numpy(idx).view(x.shape[0], *([1] * (x.dim() - 2)), count).expand(*x.shape[:-1], count)
    return x.gather(-1, idx_t)
