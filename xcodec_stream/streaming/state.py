"""Fixed-capacity per-session state: one row per slot in every tensor, reset by copying a template row."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class StateBank:
    """Tensors of shape (capacity, *template.shape), row i = session slot i.

    Never registered as module buffers (so never in a `state_dict`); allocated once, so memory does not
    change while streams run. `take(rows)` gives the rows a call works on, `put(rows, new)` writes them back;
    rows not taken do not move.
    """

    def __init__(
        self, capacity: int, templates: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> None:
        self.capacity = capacity
        # float64 templates (running statistics) keep their precision; the rest take the compute dtype
        self.templates = [
            t.to(device=device, dtype=t.dtype if t.dtype == torch.float64 else dtype) for t in templates
        ]
        self.tensors = [t.unsqueeze(0).repeat(capacity, *([1] * t.dim())) for t in self.templates]

    def __len__(self) -> int:
        return len(self.tensors)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Back to the template (a fresh session) for `rows` (None: every row)."""
        for t, tpl in zip(self.tensors, self.templates, strict=True):
            if rows is None:
                t.copy_(tpl.expand_as(t))
            else:
                t[rows] = tpl.to(t.dtype)

    def take(self, rows: torch.Tensor | None) -> list[torch.Tensor]:
        """The states of `rows` (None: all rows, no copy)."""
        if rows is None:
            return list(self.tensors)
        return [t.index_select(0, rows) for t in self.tensors]

    def put(self, rows: torch.Tensor | None, new: Sequence[torch.Tensor | None]) -> None:
        """Write back states computed for `rows`; a None entry means the state did not change."""
        for i, value in enumerate(new):
            if value is None:
                continue
            if rows is None:
                self.tensors[i] = value if value.is_contiguous() else value.contiguous()
            else:
                self.tensors[i].index_copy_(0, rows, value.to(self.tensors[i].dtype))
