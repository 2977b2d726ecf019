"""Test helpers: drive one streaming graph over a chunking; random models with non-trivial biases."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from xcodec_stream.streaming.graph import StreamGraph


def run_graph(graph: StreamGraph, x: torch.Tensor, chunks: list[int], flush: bool = True) -> torch.Tensor:
    """Feed `x` (b, C, F * in_rate) in chunks of whole frames (0 allowed), the rest, then (with `flush`) the
    end; return the outputs whose time is in [0, offline length), concatenated."""
    r = graph.in_rate
    b, c, total = x.shape
    frames = total // r
    states = graph.init_state(b, x.device, x.dtype)
    outs, pos = [], 0
    for n in [*chunks, frames]:
        n = min(n, frames - pos)
        if n <= 0:
            continue
        y, new = graph.step(x[..., pos * r : (pos + n) * r], states, np.full(b, pos))
        states = [t if u is None else u for t, u in zip(states, new, strict=True)]
        outs.append(y)
        pos += n
    if flush:
        # enough zero frames to bring out every offline output (padding may make it longer than the input)
        beyond = max(0, graph.out_len(total) - frames * graph.out_rate)
        extra = -(-(graph.delay + beyond) // graph.out_rate) + 1
        y, _ = graph.step(x.new_zeros(b, c, extra * r), states, np.full(b, pos), end=np.full(b, frames))
        outs.append(y)
    y = torch.cat(outs, dim=-1)
    start = graph.delay
    return y[..., start : start + graph.out_len(total)]


@torch.no_grad()
def liven(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random non-zero biases and Snake alphas, so that start/end handling is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(getattr(m, "alpha", None), torch.Tensor):
            m.alpha.copy_(0.5 + 1.5 * torch.rand(m.alpha.shape, generator=g))
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / (m.weight[0].numel() ** 0.5))
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return module.eval()
