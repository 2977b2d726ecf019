"""Streaming graphs: an offline module turned into a chain of streaming layers, its delay and lookahead cuts.

The chain is read off the module's own `forward` with a torch.fx trace (convs, transposed convs,
residual units and activations are the leaves), so one mechanism streams the acoustic encoder, the
acoustic decoder and the semantic encoder alike; no block is rewritten by hand. A residual unit is
anything derived from `ResidualUnit` (`forward(x) = x + branch(x)`); its `branch` is traced the same way.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from xcodec_stream.model.layers import ResidualUnit, Snake1d
from xcodec_stream.streaming.layers import (
    OPEN_END,
    STREAM_LAYERS,
    Chain,
    Conv,
    Pointwise,
    Residual,
    Step,
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


def chain_from_module(module: nn.Module, prefix: str = "") -> Chain:
    """A streaming chain equal to `module.forward` (a chain of convs, residual units and activations).
    Every node's state key is its module path under `prefix`."""
    return Chain(_nodes(_called(module), prefix), key=prefix)


def _called(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of the modules `root.forward` calls, in order."""
    names = {id(m): name for name, m in root.named_modules()}
    return [(names.get(id(m), ""), m) for m in _called_modules(root)]


def _nodes(modules: list[tuple[str, nn.Module]], prefix: str) -> list[StreamNode]:
    nodes: list[StreamNode] = []
    for name, m in modules:
        key = f"{prefix}.{name}" if prefix else name
        make = STREAM_LAYERS.get(type(m))
        if make is not None:
            nodes.append(make(m, key))
        elif isinstance(m, ResidualUnit):
            inner = [(n.removeprefix("unit."), mod) for n, mod in _called(_Branch(m))]  # paths under m
            branch = Chain(_nodes(inner, key), key=key)
            nodes.append(Residual(branch, _channels(branch), key=key))
        elif isinstance(m, ZERO_PRESERVING):
            nodes.append(Pointwise(m, key))
        else:
            nodes.extend(_nodes(_called(m), key))
    return nodes


def _channels(branch: Chain) -> int:
    for node in branch.nodes():
        if isinstance(node, Conv):
            return node.module.in_channels
    raise ValueError("a residual branch without a convolution cannot be streamed")


class StreamGraph:
    """A bound chain: its per-row state templates (named), its delay, and a static-shape batched `step`.

    `in_rate` is the number of input samples per frame (320 for a waveform, 1 for a latent). `delay` is in
    output samples: output time t is emitted by the call that commits input frame `(t + delay) // out_rate`.
    `spec_in`: input samples past the committed ones that a speculative call is given (they can be non-zero);
    a speculative call returns `spec_out` more outputs than a committed one.
    """

    def __init__(self, chain: Chain, in_rate: int, spec_in: int = 0) -> None:
        self.chain = chain
        self.in_rate = in_rate
        templates: dict[str, torch.Tensor] = {}
        offset, rate, spec = chain.bind(0, in_rate, spec_in, templates)
        self.templates = templates
        self.out_rate = rate
        self.delay = -offset
        self.spec_out = spec
        self.kept: tuple[int, int] | None = None  # (first, frames) of `keep`
        self.split: tuple[Chain, Chain] | None = None  # layers run once / twice per kept call (`keep`)
        # frames after which no node emits an output before time 0 any more
        self.warmup = max([0] + [-(n.out_offset // n.out_rate) for n in chain.nodes() if n.out_offset < 0])
        for node in chain.nodes():  # weight-derived tensors, computed now (not inside a compiled step)
            node.prepare()
        keys = [n.key for n in chain.nodes() if n.key in templates]
        if len(set(keys)) != len(keys):
            raise ValueError("two streaming layers share a state key")

    def trim(self, need: int) -> None:
        """Speculative calls compute `need` outputs past the committed ones (at most `spec_out`), and every
        layer only what the layers after it read: for callers that use less of the tail than can be
        non-zero (a lookahead shorter than the graph's delay)."""
        self.chain.trim(need)
        self.spec_out = self.chain.spec_out

    def keep(self, first: int, frames: int) -> None:
        """Speculative calls of `frames` frames are used for their outputs [first, first + frames * out_rate)
        only (`step_kept`; a lookahead shorter than the delay keeps part of the tail): the tail is trimmed to
        them, and no layer computes what neither they nor its next state read.

        When they all lie in the tail (`first >= frames * out_rate`), the layers from the first one whose
        tail starts with outputs nothing reads run twice per call: committing, computing no more than their
        next state reads; then as a call of 0 frames from that state, computing only what the kept outputs
        read. The stretch in between (speculative outputs of the deep, high-rate layers that the kept ones
        do not reach) is never computed; the layers before run once, as one speculative call."""
        n = frames * self.out_rate
        self.trim(first)
        self.kept = (first, frames)
        self.split = None
        if first >= n:
            nodes = self.chain.children
            self.chain.skip(first - n, 0)  # plans the tail-only calls of every layer: where does a gap open?
            at = next((i for i, node in enumerate(nodes) if node.skips[0][1]), len(nodes))
            if at < len(nodes):
                head, tail = Chain(nodes[:at]), Chain(nodes[at:])
                tail.skip(n, frames)  # committing: only what the next states read
                self.split = (head, tail)
                return
        self.chain.skip(first, frames)  # one call, returning its outputs from `first` on

    def step_kept(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        end: torch.Tensor,
        masking: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A speculative call of the size `keep` planned: its kept outputs (b, C', frames * out_rate), the
        first at time `pos * out_rate - delay + first`, and the new state. Arguments as `step`."""
        if self.kept is None:
            raise RuntimeError("step_kept needs keep(first, frames) first")
        first, frames = self.kept
        n = frames * self.out_rate
        if self.split is None:
            y, new = self.step(x, state, pos, end, frames=frames, speculate=True, masking=masking)
            return y[..., :n], new
        head, tail = self.split
        new: dict[str, torch.Tensor] = {}
        h, lens = head.step(
            x,
            end * self.in_rate,
            state,
            new,
            Step(frames, pos, speculate=True, masking=masking),
        )
        entry = tail.children[0]
        k = frames * entry.in_rate  # committed inputs of the tail layers; then the speculative ones
        c0, s0 = entry.skips[frames][0], entry.skips[0][0]  # where each call's plan starts reading them
        tail.step(h[..., c0:k], lens, state, new, Step(frames, pos, masking=masking))
        y, _ = tail.step(
            h[..., k + s0 :],
            lens,
            {**state, **new},
            {},  # a call of 0 frames writes no state
            Step(0, pos + frames, speculate=True, masking=masking),
        )
        return y[..., :n], new

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {}
        for k, t in self.templates.items():
            t = t.to(device=device, dtype=t.dtype if t.dtype == torch.float64 else dtype)
            out[k] = t.unsqueeze(0).repeat(batch, *([1] * t.dim()))
        return out

    def step(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        pos: torch.Tensor,
        end: torch.Tensor,
        frames: int | None = None,
        speculate: bool = False,
        masking: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Feed `x` (b, C, K * in_rate [+ speculative samples]) to rows whose state is `state`; every row
        commits `frames` (default: all of x) frames. Returns (b, C', K * out_rate [+ spec_out]) and the new
        state (every key). `pos` (b,) int64 frames each row committed before; `end` (b,) int64 each row's
        signal length in frames (OPEN_END while open; when speculating, where the signal is taken to end).
        Output j of row i has time `pos[i] * out_rate - delay + j` (j from the first output the chain's
        `skip` plan for `frames` computes, if any). A call of 0 frames returns the speculative tail only and
        its `new` state is to be dropped. `masking=False` skips the start/end masks
        (allowed once every row is at least `warmup` frames in and none has ended)."""
        k = x.shape[-1] // self.in_rate if frames is None else frames
        if not k and not speculate:
            raise ValueError("a call of 0 frames computes the speculative tail alone: pass speculate=True")
        st = Step(frames=k, pos=pos, speculate=speculate, masking=masking)
        new: dict[str, torch.Tensor] = {}
        y, _ = self.chain.step(x, end * self.in_rate, state, new, st)
        return y, new

    def out_len(self, n: int) -> int:
        return int(self.chain.out_len(torch.tensor([n]))[0])


__all__ = ["OPEN_END", "StreamGraph", "chain_from_module"]
