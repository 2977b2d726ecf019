"""Fixed-capacity per-session state: named tensors with one row per slot, plus one scratch row for padding.

Every named state of a row lies in one flat buffer per dtype (the compute dtype, and float64 for running
statistics): a step's rows are taken and put back with one `index_select` / `index_copy_` per dtype, not one
per named tensor (an encoder has 50-odd), and a compiled step gets one input and one output per dtype
instead of one per name (fewer guards, one static copy each for a CUDA graph). The names are views.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

# One buffer per dtype: {dtype: (rows, features)}. A step's rows, or the whole bank.
Flat = dict[torch.dtype, torch.Tensor]


class StateBank:
    """Named per-row states, shape (capacity + 1, *template.shape) each; row i = session slot i, the last row
    is scratch (bucket padding reads and writes it; nobody else does).

    Never registered as module buffers (so never in a `state_dict`); allocated once, so memory does not
    change while streams run. `take(rows)` copies the rows a step works on out of the bank (flat), `views`
    names them, `pack` flattens a step's new states, `put(rows, flat)` writes them back; rows not given do
    not move. `tensors` are the bank's own rows by name (views of the flat buffers).
    """

    def __init__(
        self, capacity: int, templates: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.capacity = capacity
        self.scratch = capacity
        # float64 templates (running statistics) keep their precision; the rest take the compute dtype
        self.templates = {
            k: t.to(device=device, dtype=t.dtype if t.dtype == torch.float64 else dtype)
            for k, t in templates.items()
        }
        # name -> (dtype, shape); a dtype's flat row holds its names' elements in this order (sizes: how many)
        self.layout = {k: (t.dtype, tuple(t.shape)) for k, t in self.templates.items()}
        self.sizes: dict[torch.dtype, list[int]] = {}
        for t in self.templates.values():
            self.sizes.setdefault(t.dtype, []).append(t.numel())
        self.dtypes = list(self.sizes)
        row = self.pack({k: t[None] for k, t in self.templates.items()}, 1)
        self.template_row: Flat = {dt: row[dt][0] for dt in self.dtypes}
        self.flat: Flat = {dt: self.template_row[dt].repeat(capacity + 1, 1) for dt in self.dtypes}
        self.tensors = self.views(self.flat)

    def __len__(self) -> int:
        return len(self.layout)

    def nbytes(self) -> int:
        """Bytes of the session rows (the scratch row not counted)."""
        return sum(f[: self.capacity].numel() * f.element_size() for f in self.flat.values())

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Back to the template (a fresh session) for `rows` (None: every row)."""
        for dt, f in self.flat.items():
            if rows is None:
                f.copy_(self.template_row[dt].expand_as(f))
            else:
                f[rows] = self.template_row[dt]

    def take(self, rows: torch.Tensor) -> Flat:
        """A copy of `rows`' states, flat."""
        return {dt: f.index_select(0, rows) for dt, f in self.flat.items()}

    def put(self, rows: torch.Tensor, flat: Mapping[torch.dtype, torch.Tensor]) -> None:
        """Write flat states computed for `rows` back."""
        for dt, f in self.flat.items():
            f.index_copy_(0, rows, flat[dt])

    def views(self, flat: Mapping[torch.dtype, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Flat states (n rows) -> the named states, views (a row's part of a flat row is contiguous)."""
        n = flat[self.dtypes[0]].shape[0]
        parts = {dt: iter(flat[dt].split(self.sizes[dt], dim=1)) for dt in self.dtypes}  # one op per dtype
        return {k: next(parts[dt]).view(n, *shape) for k, (dt, shape) in self.layout.items()}

    def pack(
        self, state: Mapping[str, torch.Tensor], n: int, base: Mapping[str, torch.Tensor] | None = None
    ) -> Flat:
        """Named states of n rows -> flat, one buffer per dtype (a name missing from `state` is taken from
        `base`, the states the step started from)."""
        parts: dict[torch.dtype, list[torch.Tensor]] = {dt: [] for dt in self.dtypes}
        for k, (dt, _) in self.layout.items():
            t = (state[k] if k in state or base is None else base[k]).reshape(n, -1)
            parts[dt].append(t if t.dtype == dt else t.to(dt))
        return {dt: p[0].clone() if len(p) == 1 else torch.cat(p, dim=1) for dt, p in parts.items()}
