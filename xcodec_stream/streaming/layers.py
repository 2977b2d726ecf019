"""Streaming layers: convolutions with cached input, transposed convolutions with overlap-add, delays.

Every layer turns an offline module into a step function over a batch of independent rows (sessions).
Time is counted in whole frames (one hop of the model's input); a layer sees `rate` samples per frame.
A call feeds `N` frames to every row but row `i` only *commits* its first `adv[i]` frames: the state
advances by exactly that much, so rows at different stream positions (or idle rows, `adv = 0`) share one
forward pass, and the frames past `adv[i]` may be speculative (computed from a guess, never committed).

Symmetric (non-causal) convolutions become causal with a delay: a layer keeps the last `L` input samples
and emits one output per `stride` new inputs. `L` is chosen so that the output grid lines up with the
offline one; the first output of a stream then has a (usually negative) time `offset`, and outputs whose
time is before 0 or at/after the layer's offline length are zeroed, exactly as the next offline layer's
zero padding would see them. With that, a chain of streaming layers equals the offline chain, seams
included. Once a row's end is known, layers skip computing outputs past it (they are zeros): this bounds
the cost of speculative runs that treat "the signal ends here".

State tensors are plain tensors with a leading batch dimension, owned by the caller (never buffers in a
`state_dict`): `step` reads `ctx.states[i]` and writes `ctx.new_states[i]`. Positions and ends are host
(numpy) arrays: they decide shapes, so they must not need a device sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Calls with at most this many outputs per conv use an im2col matmul instead of conv1d (2x faster on CPU
# when the weights are large and the time axis short).
IM2COL_MAX_OUTPUTS = 48

# Offline length of a row whose end is not known yet: large enough for any stream, small enough that
# `n * rate` stays far from int64 overflow.
OPEN_END = 1 << 50


@dataclass
class StepContext:
    """What one call knows about its rows: states, per-row advance, positions (for the masks)."""

    frames: int
    """N: frames fed to every row in this call."""
    states: list[torch.Tensor]
    new_states: list[torch.Tensor | None]
    pos: np.ndarray
    """(b,) int64 frames each row had committed before this call."""
    adv: np.ndarray | None = None
    """(b,) int64 frames each row commits (<= N); None: every row commits all N."""
    masking: bool = True
    """False when no row can produce an output before time 0 or after its end: masks are skipped."""

    def __post_init__(self) -> None:
        self._adv_t: dict[torch.device, torch.Tensor] = {}

    def adv_tensor(self, device: torch.device) -> torch.Tensor:
        if device not in self._adv_t:
            self._adv_t[device] = torch.from_numpy(self.adv).to(device)
        return self._adv_t[device]


def advance(buf: torch.Tensor, ctx: StepContext, rate: int, keep: int) -> torch.Tensor:
    """The `keep` samples of `buf` (b, C, L + N*rate) that end where each row's committed input ends."""
    return shift(buf, None if ctx.adv is None else ctx.adv_tensor(buf.device), rate, keep)


def shift(buf: torch.Tensor, adv: torch.Tensor | None, rate: int, keep: int) -> torch.Tensor:
    """`buf` (b, C, keep + N*rate) holds a row's kept past then N new frames; row i committed `adv[i]` of
    them (None: all). Returns the `keep` samples that end at each row's committed end."""
    b, c, total = buf.shape
    if keep == 0:
        return buf.new_zeros(b, c, 0)
    if adv is None:
        return buf[..., total - keep :].contiguous()
    idx = (adv * rate)[:, None] + torch.arange(keep, device=buf.device)[None, :]
    return buf.gather(-1, idx[:, None, :].expand(b, c, keep))


def valid_mask(
    ctx: StepContext, offset: int, rate: int, n: int, end: np.ndarray | None, device
) -> torch.Tensor:
    """(b, 1, n) bool: output sample j of this call has a time in [0, end) of this layer's offline signal."""
    t = (offset + ctx.pos * rate)[:, None] + np.arange(n)[None, :]
    ok = t >= 0
    if end is not None:
        ok &= t < end[:, None]
    return torch.from_numpy(ok[:, None, :]).to(device)


def live_outputs(ctx: StepContext, offset: int, rate: int, n: int, end: np.ndarray | None) -> int:
    """How many of the n outputs of this call can be non-zero for some row (the rest are past every end)."""
    if end is None:
        return n
    t0 = offset + ctx.pos * rate
    return int(np.clip(end - t0, 0, n).max(initial=0))


class StreamNode:
    """A node of a streaming chain. `bind` fixes its timing once, `step` runs one call."""

    in_rate: int = 1
    out_rate: int = 1
    in_offset: int = 0
    out_offset: int = 0

    def bind(self, in_offset: int, in_rate: int, states: list[torch.Tensor]) -> tuple[int, int]:
        """Fix timing for an input whose first streamed sample has time `in_offset` (at pos 0) and
        `in_rate` samples per frame; append the initial value of each per-row state (one row, no batch
        dimension; float64 templates stay float64, others take the compute dtype) to `states`.
        Returns the output's (offset, rate)."""
        raise NotImplementedError

    def out_len(self, n: np.ndarray) -> np.ndarray:
        """Offline output length for offline input length `n` (per row)."""
        return n

    def step(
        self, x: torch.Tensor, end: np.ndarray | None, ctx: StepContext
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """One call: `x` (b, C, N * in_rate), `end` the rows' offline input lengths (None: no row ended).
        Returns the output and the rows' offline output lengths."""
        raise NotImplementedError

    def nodes(self) -> list[StreamNode]:
        return [self]

    def _mask(self, y: torch.Tensor, end: np.ndarray | None, ctx: StepContext) -> torch.Tensor:
        if not ctx.masking:
            return y
        return y * valid_mask(ctx, self.out_offset, self.out_rate, y.shape[-1], end, y.device)


class Pointwise(StreamNode):
    """A per-sample module (Snake, ELU, GELU, ...). `zero_preserving`: f(0) == 0, so no mask is needed."""

    def __init__(self, module: nn.Module, zero_preserving: bool = True) -> None:
        self.module = module
        self.zero_preserving = zero_preserving

    def bind(self, in_offset, in_rate, states):
        self.in_offset = self.out_offset = in_offset
        self.in_rate = self.out_rate = in_rate
        return in_offset, in_rate

    def step(self, x, end, ctx):
        y = self.module(x)
        return (y if self.zero_preserving else self._mask(y, end, ctx)), end


class Conv(StreamNode):
    """Streaming `nn.Conv1d`: keeps the last `L` inputs, emits `N*rate/stride` outputs per call.

    `padding` overrides the module's (HuBERT's input padding is expressed this way). `L` is the smallest
    length that (a) holds a whole window, (b) puts the output grid on integer times, (c) makes the first
    output's time <= 0 so that outputs computed only from padding are emitted too. With `head`, (c) is
    dropped: the outputs before the first emitted one depend on padding alone, and whoever builds the chain
    puts their (constant) values into the next layers' initial buffers (HuBERT's 160-sample input padding
    would otherwise cost a frame).
    """

    def __init__(self, module: nn.Conv1d, padding: int | None = None, head: bool = False) -> None:
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(
                f"streaming conv needs numeric zero padding, got {module.padding!r}/{module.padding_mode}"
            )
        self.module = module
        self.kernel = module.kernel_size[0]
        self.stride = module.stride[0]
        self.dilation = module.dilation[0]
        self.groups = module.groups
        self.padding = module.padding[0] if padding is None else padding
        self.span = (self.kernel - 1) * self.dilation + 1
        self.head = head
        self.state_index = -1
        self.buffer = 0
        self._matrix: tuple[tuple, torch.Tensor] | None = None

    def matrix(self) -> torch.Tensor:
        """The kernel as (k * C_in, C_out) for the im2col path (cached)."""
        w = self.module.weight
        key = (w.data_ptr(), w.dtype, w.device, w._version)
        if self._matrix is None or self._matrix[0] != key:
            self._matrix = (key, w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous())
        return self._matrix[1]

    def bind(self, in_offset, in_rate, states):
        s = self.stride
        if in_rate % s:
            raise ValueError(f"conv stride {s} does not divide the {in_rate} samples per frame it sees")
        low = max(0, self.span - s) if self.head else max(0, self.span - s, in_offset + self.padding)
        self.buffer = low + (in_offset + self.padding - low) % s
        self.in_offset, self.in_rate = in_offset, in_rate
        self.out_offset = (in_offset - self.buffer + self.padding) // s
        self.out_rate = in_rate // s
        if self.buffer:
            self.state_index = len(states)
            states.append(torch.zeros(self.module.in_channels, self.buffer))
        return self.out_offset, self.out_rate

    def out_len(self, n):
        k, s, d, p = self.kernel, self.stride, self.dilation, self.padding
        return np.maximum((n + 2 * p - d * (k - 1) - 1) // s + 1, 0)

    def step(self, x, end, ctx):
        n_out = x.shape[-1] // self.stride
        if self.buffer:
            cat = torch.cat([ctx.states[self.state_index], x], dim=-1)
            ctx.new_states[self.state_index] = advance(cat, ctx, self.in_rate, self.buffer)
        else:
            cat = x
        if end is not None:
            end = self.out_len(end)
        live = live_outputs(ctx, self.out_offset, self.out_rate, n_out, end)
        y = self._conv(cat, live) if live else x.new_zeros(x.shape[0], self.module.out_channels, 0)
        if live < n_out:  # every row's signal ended before these outputs: they are zeros
            y = F.pad(y, (0, n_out - live))
        return self._mask(y, end, ctx), end

    def _conv(self, cat: torch.Tensor, n_out: int) -> torch.Tensor:
        need = (n_out - 1) * self.stride + self.span
        if n_out <= IM2COL_MAX_OUTPUTS and self.groups == 1 and self.kernel > 1:
            # few outputs: reading the weights dominates, and one matmul reads them best
            cols = cat[..., :need].unfold(-1, self.span, self.stride)[..., :: self.dilation]  # (b, C, n, k)
            y = cols.permute(0, 2, 3, 1).reshape(cat.shape[0], n_out, -1) @ self.matrix()
            if self.module.bias is not None:
                y = y + self.module.bias
            return y.transpose(1, 2)
        return F.conv1d(
            cat[..., :need],
            self.module.weight,
            self.module.bias,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
        )


class ConvTranspose(StreamNode):
    """Streaming `nn.ConvTranspose1d` (dilation 1): overlap-add of the tail kept per row.

    Each input sample adds `k` outputs; after a call the first `N*rate*stride` outputs can receive nothing
    more and are emitted, the rest (the tail, without bias) waits for the next call. The bias is added
    on emission. The offline `padding` crop is a fixed time offset; `output_padding` only changes the
    offline length, which the end mask applies.

    Computed as one matmul (inputs x kernel taps) and a sum of `ceil(k / stride)` shifted blocks: with few
    input frames per call, `conv_transpose1d` takes a slow path (10x slower on CPU for the DAC decoder).
    """

    def __init__(self, module: nn.ConvTranspose1d) -> None:
        if module.dilation[0] != 1 or module.groups != 1:
            raise ValueError("streaming transposed conv supports dilation 1 and groups 1 only")
        self.module = module
        self.kernel = module.kernel_size[0]
        self.stride = module.stride[0]
        self.padding = module.padding[0]
        self.output_padding = module.output_padding[0]
        self.blocks = -(-self.kernel // self.stride)  # stride-long blocks of the (zero-extended) kernel
        self.tail = (self.blocks - 1) * self.stride
        self.state_index = -1
        self._matrix: tuple[tuple, torch.Tensor] | None = None

    def bind(self, in_offset, in_rate, states):
        self.in_offset, self.in_rate = in_offset, in_rate
        self.out_offset = in_offset * self.stride - self.padding
        self.out_rate = in_rate * self.stride
        if self.tail:
            self.state_index = len(states)
            states.append(torch.zeros(self.module.out_channels, self.tail))
        return self.out_offset, self.out_rate

    def out_len(self, n):
        full = (n - 1) * self.stride - 2 * self.padding + self.kernel + self.output_padding
        return np.where(n > 0, full, 0)

    def matrix(self) -> torch.Tensor:
        """The kernel as (C_in, C_out * blocks * stride), zero-extended to whole blocks (cached)."""
        w = self.module.weight
        key = (w.data_ptr(), w.dtype, w.device, w._version)
        if self._matrix is None or self._matrix[0] != key:
            ext = F.pad(w, (0, self.blocks * self.stride - self.kernel))
            self._matrix = (key, ext.reshape(w.shape[0], -1).contiguous())
        return self._matrix[1]

    def step(self, x, end, ctx):
        b, _, n_in = x.shape
        s, c_out = self.stride, self.module.out_channels
        # inputs past every row's end are zeros: skip them
        live = live_outputs(ctx, self.in_offset, self.in_rate, n_in, end)
        taps = (x[..., :live].transpose(1, 2) @ self.matrix()).view(b, live, c_out, self.blocks, s)
        y = self._overlap(taps, n_in)
        if self.tail:
            tail = ctx.states[self.state_index]
            if ctx.adv is None:
                kept = y
            else:  # the kept tail holds committed inputs only; uncommitted ones still count for the output
                committed = np.arange(live)[None, :] < (ctx.adv * self.in_rate)[:, None]
                kept = self._overlap(
                    taps * torch.from_numpy(committed).to(taps)[:, :, None, None, None], n_in
                )
            kept = torch.cat([kept[..., : self.tail] + tail, kept[..., self.tail :]], dim=-1)
            ctx.new_states[self.state_index] = advance(kept, ctx, self.out_rate, self.tail)
            y = torch.cat([y[..., : self.tail] + tail, y[..., self.tail :]], dim=-1)
        out = y[..., : n_in * s]
        if self.module.bias is not None:
            out = out + self.module.bias[:, None]
        if end is not None:
            end = self.out_len(end)
        return self._mask(out, end, ctx), end

    def _overlap(self, taps: torch.Tensor, n_in: int) -> torch.Tensor:
        """(b, live, C, m, s) per-input kernel blocks -> (b, C, (n_in + m - 1) * s): output block j is the sum
        over i of input j - i's block i."""
        b, live, c_out, m, s = taps.shape
        y = F.pad(taps[:, :, :, 0], (0, 0, 0, 0, 0, n_in - live + m - 1))
        for i in range(1, m):
            y = y + F.pad(taps[:, :, :, i], (0, 0, 0, 0, i, n_in - live + m - 1 - i))
        return y.permute(0, 2, 1, 3).reshape(b, c_out, (n_in + m - 1) * s)


class Delay(StreamNode):
    """Delays a signal by `delay` samples (the skip path of a residual unit)."""

    def __init__(self, channels: int, delay: int) -> None:
        self.channels = channels
        self.delay = delay
        self.state_index = -1

    def bind(self, in_offset, in_rate, states):
        self.in_offset, self.in_rate, self.out_rate = in_offset, in_rate, in_rate
        self.out_offset = in_offset - self.delay
        if self.delay:
            self.state_index = len(states)
            states.append(torch.zeros(self.channels, self.delay))
        return self.out_offset, in_rate

    def step(self, x, end, ctx):
        if not self.delay:
            return x, end
        cat = torch.cat([ctx.states[self.state_index], x], dim=-1)
        ctx.new_states[self.state_index] = advance(cat, ctx, self.in_rate, self.delay)
        return cat[..., : x.shape[-1]], end


class Chain(StreamNode):
    """Nodes applied one after the other."""

    def __init__(self, nodes: list[StreamNode]) -> None:
        self.children = nodes

    def bind(self, in_offset, in_rate, states):
        self.in_offset, self.in_rate = in_offset, in_rate
        offset, rate = in_offset, in_rate
        for node in self.children:
            offset, rate = node.bind(offset, rate, states)
        self.out_offset, self.out_rate = offset, rate
        return offset, rate

    def out_len(self, n):
        for node in self.children:
            n = node.out_len(n)
        return n

    def step(self, x, end, ctx):
        for node in self.children:
            x, end = node.step(x, end, ctx)
        return x, end

    def nodes(self):
        return [n for child in self.children for n in child.nodes()]


class Residual(StreamNode):
    """`x + branch(x)` with `x` delayed by the branch's delay (aligned branches)."""

    def __init__(self, branch: Chain, channels: int) -> None:
        self.branch = branch
        self.skip = Delay(channels, 0)

    def bind(self, in_offset, in_rate, states):
        # bind the branch first to learn its delay, then the skip path with that delay
        self.in_offset, self.in_rate = in_offset, in_rate
        offset, rate = self.branch.bind(in_offset, in_rate, states)
        if rate != in_rate:
            raise ValueError("a residual branch must keep the sample rate")
        self.skip.delay = in_offset - offset
        self.skip.bind(in_offset, in_rate, states)
        self.out_offset, self.out_rate = offset, rate
        return offset, rate

    def step(self, x, end, ctx):
        y, _ = self.branch.step(x, end, ctx)
        skip, _ = self.skip.step(x, end, ctx)
        return skip + y, end

    def nodes(self):
        return [self, *self.branch.nodes(), self.skip]
