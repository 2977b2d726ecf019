"""Slots shared by the streaming encoder and decoder: per-row counters, buckets, the (compiled) static step.

Every step of an engine moves each of its rows by the same `K` frames (the preset's step), so the step
function has static shapes but for the number of rows. Captured as CUDA graphs
(`torch.compile(mode="reduce-overhead")`), a step runs a batch of `bucket` rows (1, 2, 4, 8, ... up to the
capacity), padded with a scratch row of the state bank: one graph per bucket. Compiled by inductor
(`compile`), the row count is a dynamic dimension: one graph for 2-15 rows and one for 16 or more (conv1d
picks its memory format at 16), and one for a single row (torch specialises size 1); no padding. Eager
steps run the due rows only. Rows at different stream positions, starting or ending, share one step: the
step's masks come from the per-row `pos` / `end` tensors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from xcodec_stream.streaming.layers import OPEN_END
from xcodec_stream.streaming.state import Flat, StateBank

log = logging.getLogger("xcodec_stream.streaming")

COMPILE_MODES = ("eager", "compile", "cuda-graphs")


def bucket_size(n: int, capacity: int) -> int:
    """The batch a step of `n` rows runs at: the next power of two, at most the capacity."""
    b = 1
    while b < n:
        b *= 2
    return min(b, capacity)


def resolve_compile(mode: str | bool, device: torch.device) -> str:
    """'auto' / True: CUDA graphs on a GPU, eager elsewhere (on a CPU inductor takes minutes to compile, the
    first time, for a step 1.3-2.5x faster: worth asking for, not a default); False: eager."""
    if mode is True or mode == "auto":
        return "cuda-graphs" if device.type == "cuda" else "eager"
    if mode is False or mode is None:
        return "eager"
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of auto, {', '.join(COMPILE_MODES)}; got {mode!r}")
    if mode == "cuda-graphs" and device.type != "cuda":
        raise ValueError("compile='cuda-graphs' needs a CUDA device")
    return mode


class SlotEngine:
    """Rows of a fixed-capacity batch, one per session ("slot"), with host-side counters.

    Counters (numpy int64, one entry per row): `pos` frames committed (negative while a row's lead runs),
    `end` the row's length in frames once flushed (OPEN_END before), `finished` after a flush until reset.
    Subclasses define `_core(inputs..., state, pos, end) -> (outputs, new_state)`: the static step.
    """

    kind = "engine"
    # Per-row host arrays/tensors a step changes besides the state bank (subclasses add theirs): what
    # `atomic` saves and restores.
    row_fields: tuple[str, ...] = ("pos", "end", "finished")
    # Steps run under `atomic(slots)` leave their slots as they were when they raise (the daemon then retries
    # the rest of a batch after an out-of-memory error).
    atomic_steps = True

    def __init__(
        self, model: torch.nn.Module, batch_size: int, step_frames: int, compile: str | bool
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self.device = model.device
        self.dtype = model.dtype
        self.frame_size = model.hop_length
        self.sample_rate = model.sample_rate
        self.step_frames = step_frames
        self.pos = np.zeros(batch_size, dtype=np.int64)
        self.end = np.full(batch_size, OPEN_END, dtype=np.int64)
        self.finished = np.zeros(batch_size, dtype=bool)
        self.compile_mode = resolve_compile(compile, self.device)
        self._step_fn: Callable | None = None
        self.steps = 0  # static steps run (all rows of a bucket count once)
        # inside `atomic`: its rows, and their bank state as it was, saved by the first step that writes it
        self._undo_rows: torch.Tensor | None = None
        self._undo_bank: Flat | None = None
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

    @torch.inference_mode()  # the states are inference tensors once a step ran
    def reset(self, slot: int | None = None) -> None:
        """Start a fresh session in `slot` (None: every slot); the other slots keep running untouched."""
        self._before_write()
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
        those rows' state, made by the first step inside that writes the bank: none when no step runs (a
        server's tick mostly only buffers input: clients' chunks are shorter than a step)."""
        rows = np.array(sorted({self._slot(s) for s in slots}), dtype=np.int64)
        if self._undo_rows is not None:
            raise RuntimeError("atomic blocks do not nest")
        with torch.inference_mode():  # the bank holds inference tensors once a step ran
            rows_t = torch.from_numpy(rows).to(self.device)
            saved = {}
            for name in self.row_fields:
                value = getattr(self, name)
                if isinstance(value, list):
                    saved[name] = [value[r] for r in rows]
                elif torch.is_tensor(value):
                    saved[name] = value[torch.from_numpy(rows)].clone()
                else:
                    saved[name] = value[rows].copy()
        self._undo_rows, self._undo_bank = (rows_t if len(rows) else None), None
        try:
            yield
        except BaseException:
            with torch.inference_mode():
                if self._undo_bank is not None:
                    self.bank.put(self._undo_rows, self._undo_bank)
                for name, value in saved.items():
                    target = getattr(self, name)
                    if isinstance(target, list):
                        for r, v in zip(rows, value, strict=True):
                            target[r] = v
                    else:
                        target[torch.from_numpy(rows) if torch.is_tensor(target) else rows] = value
            raise
        finally:
            self._undo_rows = self._undo_bank = None

    def _before_write(self) -> None:
        """Inside `atomic`, before the first write to the bank: save its rows as they are."""
        if self._undo_rows is not None and self._undo_bank is None:
            self._undo_bank = self.bank.take(self._undo_rows)

    def _reset_rows(self, rows: np.ndarray) -> None:
        """Engine-specific counters of `rows` back to a fresh session."""

    # ---- regrouping input into whole steps ----------------------------------------------------------------
    # Subclasses keep per-row pending input in `self.pending[r]` (time on the last axis) and define `_due`,
    # `_take` (the due rows' input of one step, taken off their buffers), `_advance` (one step) and `_join`.
    pending: list[torch.Tensor]

    def _check_sync(self, rows: np.ndarray, use: str) -> None:
        sizes = {self.pending[r].shape[-1] for r in rows}
        if len(sizes) > 1 or not (self.pos[rows] == self.pos[rows[0]]).all():
            raise ValueError(f"the rows are not in sync (different stream positions); use {use}")

    def _drain(self, rows: list[int], flushing: bool) -> dict[int, torch.Tensor]:
        """Run static steps while any of `rows` has a whole step of input (or, flushing, output to bring
        out); returns each row's output joined."""
        parts: dict[int, list[torch.Tensor]] = {r: [] for r in rows}
        while True:
            due = np.array([r for r in rows if self._due(r, flushing)], dtype=np.int64)
            if not len(due):
                break
            for r, out in zip(due, self._advance(due, *self._take(due)), strict=True):
                parts[int(r)].append(out)
        return {r: self._join(r, p) for r, p in parts.items()}

    def _due(self, r: int, flushing: bool) -> bool:
        raise NotImplementedError

    def _take(self, due: np.ndarray) -> list[torch.Tensor]:
        raise NotImplementedError

    def _advance(self, rows: np.ndarray, *inputs: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _join(self, r: int, parts: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes held by per-session state (constant while streams run)."""
        return self.bank.nbytes()

    # ---- the static step ------------------------------------------------------------------------------
    @property
    def warmup(self) -> int:
        """Frames a row must have committed before its steps need no start masks."""
        raise NotImplementedError

    def _core(self, *args: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _flat_core(self, *args: object) -> tuple[torch.Tensor, Flat]:
        """`_core` on flat states (the bank's layout): inputs..., flat, pos, end, masking -> output, new flat.
        What is compiled: the named views and the packing of the new states are inside the graph."""
        *inputs, flat, pos, end, masking = args
        n = len(pos)
        state = self.bank.views(flat)
        out, new = self._core(*inputs, state, pos, end, masking)
        return out, self.bank.pack(new, n, state)

    def step_function(self) -> Callable:
        """The step, compiled on first use when asked for (see the module docstring for the graphs)."""
        if self._step_fn is None:
            self._step_fn = self._flat_core if self.compile_mode == "eager" else self.compiled()
        return self._step_fn

    def compiled(self, backend: str | Callable = "inductor") -> Callable:
        """The step under torch.compile: static shapes for CUDA graphs; a dynamic batch dimension otherwise
        (`_call` marks it)."""
        import torch._dynamo

        # a graph per bucket (CUDA graphs) or per row-count range (inductor), per engine: allow them all
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        if self.compile_mode == "cuda-graphs":
            return torch.compile(
                self._flat_core, dynamic=False, fullgraph=True, mode="reduce-overhead", backend=backend
            )
        return torch.compile(self._flat_core, dynamic=None, fullgraph=True, backend=backend)

    @property
    def padded(self) -> bool:
        """Whether steps run at bucket sizes (CUDA graphs) rather than at their number of rows."""
        return self.compile_mode == "cuda-graphs"

    def buckets(self) -> list[int]:
        """The batch sizes that get a graph of their own: the buckets for CUDA graphs; with inductor, 1 and one
        size of each range torch's guards keep apart (conv1d picks its memory format at 16 rows: 2-15, 16 and
        more); every size in eager mode."""
        if self.padded:
            return sorted({bucket_size(n, self.batch_size) for n in range(1, self.batch_size + 1)})
        if self.compile_mode == "compile":
            return [b for b in (1, 2, 16) if b <= self.batch_size]
        return list(range(1, self.batch_size + 1))

    def _call(self, fn: Callable, inputs: list[torch.Tensor], state: Flat, pos, end, masking: bool):
        if self.compile_mode != "compile":
            return fn(*inputs, state, pos, end, masking)
        import torch._dynamo

        if len(pos) > 1:
            # one graph for every row count: the batch dimension is symbolic (a size of 1 stays specialised)
            for t in (*inputs, *state.values(), pos, end):
                torch._dynamo.mark_dynamic(t, 0)
        # and nothing else: every engine's step is one code object to dynamo, so a second preset's engine
        # (another step size) would otherwise make the time axis symbolic too, where inductor generated code
        # that referred to an unbound size (NameError at the first call)
        with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            return fn(*inputs, state, pos, end, masking)

    def _dummy_inputs(self, batch: int) -> list[torch.Tensor]:
        """Inputs of one step for `batch` rows (zeros): what `warm_up` feeds the step."""
        raise NotImplementedError

    @torch.inference_mode()
    def warm_up(self) -> float:
        """Compile (or capture) the step for every bucket now, on scratch copies of the state: no slot moves.
        Returns the seconds it took. Eager engines return at once."""
        if self.compile_mode == "eager":
            return 0.0
        t0 = time.perf_counter()
        fn = self.step_function()
        for b in self.buckets():
            scratch = torch.full((b,), self.bank.scratch, device=self.device)
            pos = torch.zeros(b, dtype=torch.long, device=self.device)
            end = torch.full((b,), OPEN_END, device=self.device)
            for _ in range(3):  # CUDA graphs record after warm-up calls
                self._call(fn, self._dummy_inputs(b), self.bank.take(scratch), pos, end, True)
        log.info(
            "%s: step compiled (%s) for buckets %s in %.1f s",
            self.kind,
            self.compile_mode,
            self.buckets(),
            time.perf_counter() - t0,
        )
        return time.perf_counter() - t0

    def _run(self, rows: np.ndarray, inputs: list[torch.Tensor], end: np.ndarray) -> torch.Tensor:
        """One static step for `rows` (sorted): inputs (n, ...) each; `end` (n,) where each row's signal is
        taken to end. Commits K frames to every row; returns the step's output for the n rows."""
        n = len(rows)
        # steps run at exactly n rows but for CUDA graphs (one per bucket): elsewhere padding is pure waste
        # (100 sessions would compute 128 rows)
        b = bucket_size(n, self.batch_size) if self.padded else n
        pos = self.pos[rows]
        # eager: masks only where a row is warming up or past its end; compiled, they are fused and cheap,
        # and one graph serves every position
        masking = self.compile_mode != "eager" or bool(pos.min() < self.warmup or (end < OPEN_END).any())
        if b == n == self.batch_size and self.compile_mode == "eager":
            idx = None  # every slot in order: the bank's own rows, no gather/scatter copies (eager only: a
            # compiled step was built on gathered inputs, and a view of the bank would make it recompile)
        else:
            idx = torch.from_numpy(np.concatenate([rows, np.full(b - n, self.bank.scratch)])).to(self.device)
        if b > n:
            inputs = [torch.cat([x, x.new_zeros(b - n, *x.shape[1:])]) for x in inputs]
            # padding rows (scratch state, output dropped) copy the first row's position
            pos = np.concatenate([pos, np.full(b - n, pos[0])])
            end = np.concatenate([end, np.full(b - n, end[0])])
        state = self.bank.take(idx) if idx is not None else {dt: f[:b] for dt, f in self.bank.flat.items()}
        pos_t = torch.from_numpy(pos).to(self.device)
        end_t = torch.from_numpy(np.ascontiguousarray(end)).to(self.device)
        out, new = self._call(self.step_function(), inputs, state, pos_t, end_t, masking)
        self._before_write()
        if idx is None:
            for dt, f in self.bank.flat.items():
                f[:b].copy_(new[dt])
        else:
            self.bank.put(idx, new)
        self.pos[rows] += self.step_frames
        self.steps += 1
        return out[:n]
