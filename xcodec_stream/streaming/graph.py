"""Streaming graphs: an offline module turned into a chain of streaming layers, its delay and lookahead cuts.

The chain is read off the module's own `forward` with a torch.fx trace (convs, transposed convs,
residual units and activations are the leaves), so one mechanism streams the acoustic encoder, the
acoustic decoder and the semantic encoder alike; no block is rewritten by hand. A residual unit is
anything derived from `ResidualUnit` (`forward(x) = x + branch(x)`); its `branch` is traced the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from xcodec_stream.model.layers import ResidualUnit, Snake1d
from xcodec_stream.streaming.layers import (
    OPEN_END,
    Chain,
    Conv,
    ConvTranspose,
    Pointwise,
    Residual,
    StepContext,
    StreamNode,
)

# Activations with f(0) == 0: zeros before the start / after the end stay zeros, no mask needed after them.
ZERO_PRESERVING = (Snake1d, nn.ELU, nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.Identity)


class _Leaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(
            m, (ResidualUnit, nn.Conv1d, nn.ConvTranspose1d, *ZERO_PRESERVING)
        ) or super().is_leaf_module(m, qualname)


class _Branch(nn.Module):
    """Makes `unit.branch` traceable: fx traces `forward` of a module that owns `unit`."""

    def __init__(self, unit: ResidualUnit) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit.branch(x)


def _called_modules(root: nn.Module) -> list[nn.Module]:
    """The modules `root.forward` calls, in order, checking that they form a single chain."""
    name = type(root.unit).__name__ + ".branch" if isinstance(root, _Branch) else type(root).__name__
    try:
        graph = _Leaves().trace(root)
    except Exception as exc:  # fx raises several types; say which module could not be read
        raise ValueError(f"cannot stream {name}: its forward is not traceable ({exc})") from exc
    prev = None
    out = []
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise ValueError(f"cannot stream {name}: forward takes more than one input")
            prev = node
        elif node.op == "call_module":
            if len(node.args) != 1 or node.args[0] is not prev or node.kwargs:
                raise ValueError(
                    f"cannot stream {name}: {node.target} is not fed by the previous layer alone"
                )
            out.append(root.get_submodule(node.target))
            prev = node
        elif node.op == "output":
            if node.args[0] is not prev:
                raise ValueError(f"cannot stream {name}: the output is not the last layer's")
        else:
            raise ValueError(f"cannot stream {name}: unsupported operation {node.op} {node.target}")
    return out


def chain_from_module(module: nn.Module) -> Chain:
    """A streaming chain equal to `module.forward` (a chain of convs, residual units and activations)."""
    return Chain(_nodes(_called_modules(module)))


def _nodes(modules: list[nn.Module]) -> list[StreamNode]:
    nodes: list[StreamNode] = []
    for m in modules:
        if isinstance(m, nn.Conv1d):
            nodes.append(Conv(m))
        elif isinstance(m, nn.ConvTranspose1d):
            nodes.append(ConvTranspose(m))
        elif isinstance(m, ResidualUnit):
            branch = Chain(_nodes(_called_modules(_Branch(m))))
            nodes.append(Residual(branch, _channels(branch)))
        elif isinstance(m, ZERO_PRESERVING):
            nodes.append(Pointwise(m))
        else:
            nodes.extend(_nodes(_called_modules(m)))
    return nodes


def _channels(branch: Chain) -> int:
    for node in branch.nodes():
        if isinstance(node, Conv):
            return node.module.in_channels
    raise ValueError("a residual branch without a convolution cannot be streamed")


class StreamGraph:
    """A bound chain: its per-row state templates, its delay, and a batched `step`.

    `in_rate` is the number of input samples per frame (320 for a waveform, 1 for a latent). `delay` is in
    output samples: output time t is emitted by the call that commits input frame `(t + delay) // out_rate`.
    """

    def __init__(self, chain: Chain, in_rate: int) -> None:
        self.chain = chain
        self.in_rate = in_rate
        templates: list[torch.Tensor] = []
        offset, rate = chain.bind(0, in_rate, templates)
        self.templates = templates
        self.out_rate = rate
        self.delay = -offset
        # frames after which no layer emits an output before time 0 any more (masks can be skipped)
        self.warmup = max([0] + [-(n.out_offset // n.out_rate) for n in chain.nodes() if n.out_offset < 0])

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        out = []
        for t in self.templates:
            t = t.to(device=device, dtype=t.dtype if t.dtype == torch.float64 else dtype)
            out.append(t.unsqueeze(0).repeat(batch, *([1] * t.dim())))
        return out

    def step(
        self,
        x: torch.Tensor,
        states: list[torch.Tensor],
        pos: np.ndarray,
        adv: np.ndarray | None = None,
        end: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Feed `x` (b, C, N * in_rate) to rows whose states are `states`; returns (b, C', N * out_rate) and
        the new states (None where a state did not change).

        `pos` (b,) frames each row committed before; `adv` (b,) frames each row commits now (None: all N);
        `end` (b,) each row's signal length in frames where known (OPEN_END otherwise; None: no row ended).
        Output j of row i has time `pos[i] * out_rate - delay + j`."""
        frames = x.shape[-1] // self.in_rate
        pos = np.asarray(pos, dtype=np.int64)
        masking = end is not None or int(pos.min(initial=0)) < self.warmup
        ctx = StepContext(frames, states, [None] * len(states), pos=pos, adv=adv, masking=masking)
        end_in = None if end is None else np.asarray(end, dtype=np.int64) * self.in_rate
        y, _ = self.chain.step(x, end_in, ctx)
        return y, ctx.new_states

    def out_len(self, n: int) -> int:
        return int(self.chain.out_len(np.array([n]))[0])


__all__ = ["OPEN_END", "StreamGraph", "chain_from_module"]
