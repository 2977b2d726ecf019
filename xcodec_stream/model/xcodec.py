"""X-Codec model (being written: this placeholder keeps the package importable)."""

from __future__ import annotations

from torch import nn


class XcodecModel(nn.Module):  # placeholder, replaced by the full model
    pass
