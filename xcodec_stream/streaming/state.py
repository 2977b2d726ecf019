"""Fixed-capacity per-session state: named tensors with one row per slot, plus one scratch row for padding."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class StateBank:
    """Tensors of shape (capacity + 1, *template.shape) by name; row i = session slot i, the last row is
    scratch (bucket padding reads and writes it; nobody else does).

    Never registered as module buffers (so never in a `state_dict`); allocated once, so memory does not
    change while streams run. `gather(rows)` gives the rows a step works on, `scatter(rows, new)` writes
    them back; rows not given do not move.
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
        self.tensors = {
            k: t.unsqueeze(0).repeat(capacity + 1, *([1] * t.dim())) for k, t in self.templates.items()
        }

    def __len__(self) -> int:
        return len(self.tensors)

    def nbytes(self) -> int:
        """Bytes of the session rows (the scratch row not counted)."""
        return sum(t[: self.capacity].numel() * t.element_size() for t in self.tensors.values())

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Back to the template (a fresh session) for `rows` (None: every row)."""
        for k, t in self.tensors.items():
            tpl = self.templates[k]
            if rows is None:
                t.copy_(tpl.expand_as(t))
            else:
                t[rows] = tpl

    def gather(self, rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The states of `rows` (None: every row including scratch, no copy)."""
        if rows is None:
            return dict(self.tensors)
        return {k: t.index_select(0, rows) for k, t in self.tensors.items()}

    def scatter(self, rows: torch.Tensor | None, new: Mapping[str, torch.Tensor]) -> None:
        """Write back states computed for `rows` (None: every row, the tensors are replaced, no copy)."""
        for k, value in new.items():
            if rows is None:
                self.tensors[k] = value if value.is_contiguous() else value.contiguous()
            else:
                self.tensors[k].index_copy_(0, rows, value.to(self.tensors[k].dtype))
