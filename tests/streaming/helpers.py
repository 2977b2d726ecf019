"""Test helpers: drive one streaming graph over a chunking; random models with non-trivial biases."""

from __future__ import annotations

import torch
from torch import nn

from xcodec_stream.streaming.graph import StreamGraph
from xcodec_stream.streaming.layers import OPEN_END


def run_graph(graph: StreamGraph, x: torch.Tensor, chunks: list[int], flush: bool = True) -> torch.Tensor:
    """Feed `x` (b, C, F * in_rate) in chunks of whole frames (0 allowed), the rest, then (with `flush`) the
    end; return the outputs whose time is in [0, offline length), concatenated."""
    r = graph.in_rate
    b, c, total = x.shape
    frames = total // r
    state = graph.init_state(b, x.device, x.dtype)
    open_end = torch.full((b,), OPEN_END)
    outs, pos = [], 0
    for n in [*chunks, frames]:
        n = min(n, frames - pos)
        if n <= 0:
            continue
        y, state = graph.step(x[..., pos * r : (pos + n) * r], state, torch.full((b,), pos), open_end)
        outs.append(y)
        pos += n
    if flush:
        # enough zero frames to bring out every offline output (padding may make it longer than the input)
        beyond = max(0, graph.out_len(total) - frames * graph.out_rate)
        extra = -(-(graph.delay + beyond) // graph.out_rate) + 1
        y, _ = graph.step(
            x.new_zeros(b, c, extra * r), state, torch.full((b,), pos), torch.full((b,), frames)
        )
        outs.append(y)
    y = torch.cat(outs, dim=-1)
    start = graph.delay
    return y[..., start : start + graph.out_len(total)]


def speculate(graph: StreamGraph, x: torch.Tensor, cut: int) -> torch.Tensor:
    """Commit the first `cut` frames of `x` in one call with speculation: the outputs of the offline module
    on `x` cut there, from time 0 on (committed and speculative outputs together)."""
    r = graph.in_rate
    b = x.shape[0]
    state = graph.init_state(b, x.device, x.dtype)
    y, _ = graph.step(
        x[..., : cut * r], state, torch.zeros(b, dtype=torch.long), torch.full((b,), cut), speculate=True
    )
    return y[..., graph.delay :]


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
