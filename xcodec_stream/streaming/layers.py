"""Streaming layers with static shapes: cached-input convs, overlap-add transposed convs, delays, residuals.

Every layer turns an offline module into a step function over a batch of independent rows (sessions).
Time is counted in whole frames (one hop of the model's input); a layer sees `in_rate` samples per frame.

A call commits the same whole number of frames `K` for every row (static shapes: nothing depends on the
data or on where a row stands), so one step can be compiled or captured in a CUDA graph. What differs
between rows (stream start, stream end) is handled by masks computed on the device from per-row position
tensors: output times before 0 or at/after the layer's offline length are zeroed, exactly as the next
offline layer's zero padding would see them.

Symmetric (non-causal) convolutions become causal with a delay: a layer keeps the last `buffer` input
samples and emits one output per `stride` new inputs; `buffer` puts the output grid on the offline one.

Speculation: with `speculate=True` a call also computes the outputs *after* the committed ones that the
offline model would give if the signal ended where the committed input ends (`end`); each layer pads its
input with zeros as far as it needs (the offline zero padding) and computes a static number of extra
outputs (`spec_out`, fixed at bind time: only those that can be non-zero). The state only ever takes the
committed part: speculation writes no state. `trim(need)`, run backwards from the graph's output once bound,
cuts each layer's speculative outputs to those the layers after it read (a tail the output does not reach
is not computed at all). `skip(first, frames)` is its mirror at the front, planned per call size: a call of
`frames` frames computes each layer's outputs from where the layers after it (and, committing, its own next
state) start reading, so that the graph returns its outputs from `first` on. A call of 0 frames commits
nothing and computes the speculative tail alone, from a state that a committed call just wrote: a caller
that keeps only the tail's far end (a lookahead shorter than the delay) runs a committed call that computes
no more than the next state reads, then such a call that computes no more than the far end reads.

State: every stateful layer owns one tensor, named by the layer's `key` (its module path), with a leading
batch dimension; a graph's state is a `dict[str, Tensor]`, never a module buffer. `STREAM_LAYERS` maps
module types to streaming layers: a new layer type is one class and one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.layers import Snake1d, derived

# Calls with at most this many outputs per conv use an im2col matmul instead of conv1d (faster on CPU
# when the weights are large and the time axis short).
IM2COL_MAX_OUTPUTS = 48
# ... and at any length from this many input channels on (measured: 128 channels, k7, 700 outputs: 6.2 ms
# against 9.5 ms for conv1d; 64 channels stay faster with conv1d).
IM2COL_MIN_CHANNELS = 128

# Offline length (in frames) of a row whose end is not known yet: large enough for any stream, small enough
# that `n * rate` stays far from int64 overflow.
OPEN_END = 1 << 50

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Step:
    """What one call knows: its static size and the rows' positions (device tensors, shape (b,))."""

    frames: int
    """K: input frames every row commits in this call."""
    pos: torch.Tensor
    """int64 frames each row committed before this call (may be negative: a row that starts with a lead)."""
    speculate: bool = False
    """Also compute the outputs past the committed ones, the signal taken to end at `end`."""
    masking: bool = True
    """False when no row is within its warm-up (outputs before time 0) or past a real end: the masks are all
    ones then (a speculative tail has exactly the outputs that can be non-zero), so they are skipped."""


def time_mask(t0: torch.Tensor, n: int, length: torch.Tensor) -> torch.Tensor:
    """(b, 1, n) bool: output j of row i has time t0[i] + j inside [0, length[i])."""
    t = t0[:, None] + torch.arange(n, device=t0.device)[None, :]
    return ((t >= 0) & (t < length[:, None]))[:, None, :]


class StreamNode:
    """A node of a streaming chain. `bind` fixes its timing once, `step` runs one call."""

    key: str = ""
    in_rate: int = 1
    out_rate: int = 1
    in_offset: int = 0
    out_offset: int = 0
    spec_out: int = 0
    reads: int | None = None  # speculative inputs the node reads, once its chain is trimmed (None: all)
    skips: dict[int, tuple[int, int]] | None = None  # frames -> (first input read, first output computed)

    def bind(self, in_offset: int, in_rate: int, spec_in: int, states: State) -> tuple[int, int, int]:
        """Fix timing for an input whose first streamed sample has time `in_offset` (at pos 0), `in_rate`
        samples per frame and, when speculating, `spec_in` input samples past the committed ones that can be
        non-zero. Adds the initial value of this node's state (one row, no batch dimension) to `states`.
        Returns the output's (offset, rate, spec_out)."""
        raise NotImplementedError

    def out_len(self, n: torch.Tensor) -> torch.Tensor:
        """Offline output length for offline input length `n` (per row, int64 tensor)."""
        return n

    def trim(self, need: int) -> int:
        """Compute at most `need` speculative outputs (after `bind`); returns the speculative inputs that takes.
        Pointwise layers: as many inputs as outputs."""
        self.spec_out = min(self.spec_out, need)
        return self.spec_out

    def skip(self, first: int, frames: int) -> int:
        """Calls of `frames` frames compute the outputs from index `first` on (after `bind`); returns the first
        input index the node then reads, its next state included (none when `frames` is 0: such a call writes
        no state). Pointwise layers: the same index."""
        return self._plan(frames, first, first)

    def _plan(self, frames: int, first_in: int, first_out: int) -> int:
        if self.skips is None:
            self.skips = {}
        self.skips[frames] = (first_in, first_out)
        return first_in

    def _reads_from(self, start: int, frames: int, held: int) -> int:
        """First input index read by the outputs computed, whose reach starts at input `start` (counted with
        the `held` inputs kept from the last call in front of the call's own), and, committing, by the next
        state: the last `held` committed inputs."""
        if frames:
            start = min(start, frames * self.in_rate)
        return max(0, start - held)

    def prepare(self) -> None:
        """Compute the node's weight-derived tensors now (`StreamGraph` calls it once bound): a compiled step
        reads them as they are, since dynamo cannot trace their cache check."""

    def step(
        self, x: torch.Tensor, n: torch.Tensor, state: State, new: State, st: Step
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One call: `x` (b, C, K * in_rate [+ speculative samples]), `n` the rows' offline input lengths.
        Reads `state[key]`, writes `new[key]`. Returns the output and the rows' offline output lengths."""
        raise NotImplementedError

    def nodes(self) -> list[StreamNode]:
        return [self]

    def constant(self, value: torch.Tensor) -> torch.Tensor:
        """The output for an input that is `value` (per channel) everywhere (start-up buffers)."""
        raise NotImplementedError(f"{type(self).__name__} has no constant response")

    def _n_out(self, st: Step) -> int:
        return st.frames * self.out_rate + (self.spec_out if st.speculate else 0)

    def _first(self, st: Step) -> tuple[int, int]:
        """(first input given, first output computed) of this call (0, 0 unless `skip` planned its size)."""
        return self.skips.get(st.frames, (0, 0)) if self.skips else (0, 0)

    def _mask(self, y: torch.Tensor, n_len: torch.Tensor, st: Step) -> torch.Tensor:
        if not st.masking:
            return y
        t0 = self.out_offset + st.pos * self.out_rate + self._first(st)[1]
        return y * time_mask(t0, y.shape[-1], n_len).to(y.dtype)

    def _spec(self, n_len: Callable[[int], int], in_offset: int, in_rate: int, spec_in: int) -> int:
        """Extra outputs that can be non-zero when the signal ends where the committed input ends: the
        offline length minus the committed outputs, the same for every stream position (checked)."""
        got = set()
        for p in (1000, 1001):
            length = n_len(in_offset + p * in_rate + spec_in)
            got.add(max(0, length - (self.out_offset + p * self.out_rate)))
        if len(got) != 1:
            raise ValueError(f"{type(self).__name__} {self.key}: speculative length depends on the position")
        return got.pop()


class Pointwise(StreamNode):
    """A per-sample module (Snake, ELU, GELU, ...). `zero_preserving`: f(0) == 0, so no mask is needed."""

    def __init__(self, module: nn.Module, key: str = "", zero_preserving: bool = True) -> None:
        self.module = module
        self.key = key
        self.zero_preserving = zero_preserving

    def bind(self, in_offset, in_rate, spec_in, states):
        self.in_offset = self.out_offset = in_offset
        self.in_rate = self.out_rate = in_rate
        self.spec_out = spec_in
        return in_offset, in_rate, spec_in

    def step(self, x, n, state, new, st):
        y = self.module(x)
        return (y if self.zero_preserving else self._mask(y, n, st)), n

    def prepare(self):
        if isinstance(self.module, Snake1d):
            self.module.inverse()

    def constant(self, value):
        param = next(self.module.parameters(), value)
        return self.module(value[None, :, None].to(param.dtype))[0, :, 0].float()


class Conv(StreamNode):
    """Streaming `nn.Conv1d`: keeps the last `buffer` inputs, emits `K*in_rate/stride` outputs per call.

    `padding` overrides the module's (HuBERT's input padding is expressed this way). `buffer` is the smallest
    length that (a) holds a whole window, (b) puts the output grid on integer times, (c) makes the first
    output's time <= 0 so that outputs computed only from padding are emitted too. With `head`, (c) is
    dropped: the outputs before the first emitted one depend on padding alone, and whoever builds the chain
    puts their (constant) values into the next layers' initial buffers.
    """

    def __init__(self, module: nn.Conv1d, key: str = "", padding: int | None = None, head: bool = False):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError(
                f"streaming conv needs numeric zero padding, got {module.padding!r}/{module.padding_mode}"
            )
        self.module = module
        self.key = key
        self.kernel = module.kernel_size[0]
        self.stride = module.stride[0]
        self.dilation = module.dilation[0]
        self.groups = module.groups
        self.padding = module.padding[0] if padding is None else padding
        self.span = (self.kernel - 1) * self.dilation + 1
        self.head = head
        self.buffer = 0
        self._cache: dict = {}  # prepared kernels (`derived`)

    def matrix(self) -> torch.Tensor:
        """The kernel as (k * C_in, C_out) for the im2col path (computed once; `prepare` makes it)."""
        return derived(
            self._cache,
            "matrix",
            self.module.weight,
            lambda w: w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous(),
        )

    def bind(self, in_offset, in_rate, spec_in, states):
        s = self.stride
        if in_rate % s:
            raise ValueError(f"conv stride {s} does not divide the {in_rate} samples per frame it sees")
        low = max(0, self.span - s) if self.head else max(0, self.span - s, in_offset + self.padding)
        self.buffer = low + (in_offset + self.padding - low) % s
        self.in_offset, self.in_rate = in_offset, in_rate
        self.out_offset = (in_offset - self.buffer + self.padding) // s
        self.out_rate = in_rate // s
        self.spec_out = self._spec(self._len, in_offset, in_rate, spec_in)
        if self.buffer:
            states[self.key] = torch.zeros(self.module.in_channels, self.buffer)
        return self.out_offset, self.out_rate, self.spec_out

    def _len(self, n: int) -> int:
        return max((n + 2 * self.padding - self.span) // self.stride + 1, 0)

    def trim(self, need):
        spec = super().trim(need)
        # the window of the last output ends `span` after its start; the kept buffer precedes the input
        return max(0, (spec - 1) * self.stride + self.span - self.buffer)

    def skip(self, first, frames):
        # output j's window starts at input j * stride - buffer
        return self._plan(frames, self._reads_from(first * self.stride, frames, self.buffer), first)

    def prepare(self):
        self.matrix()

    def out_len(self, n):
        return ((n + 2 * self.padding - self.span).div(self.stride, rounding_mode="floor") + 1).clamp(min=0)

    def step(self, x, n, state, new, st):
        first_in, first = self._first(st)
        if self.buffer and not first_in:
            cat = torch.cat([state[self.key], x], dim=-1)
            base = 0  # input i of the call is cat[buffer + i]
        else:  # skipping past the kept inputs: the call's own inputs hold the next state
            cat, base = x, first_in + self.buffer
        if self.buffer and st.frames:
            k = st.frames * self.in_rate - base
            new[self.key] = cat[..., k : k + self.buffer]
        n_out = self._n_out(st) - first
        if n_out <= 0:  # a committing call that only writes the state
            return cat.new_zeros(cat.shape[0], self.module.out_channels, 0), n
        start = first * self.stride - base
        need = start + (n_out - 1) * self.stride + self.span
        if cat.shape[-1] < need:  # speculative outputs read the offline zero padding past the end
            cat = F.pad(cat, (0, need - cat.shape[-1]))
        y = self._conv(cat if start == 0 and cat.shape[-1] == need else cat[..., start:need], n_out)
        if not st.masking:  # lengths only matter to the masks
            return y, n
        n = self.out_len(n)
        return self._mask(y, n, st), n

    def _conv(self, cat: torch.Tensor, n_out: int) -> torch.Tensor:
        if self.kernel == 1 and self.groups == 1 and self.stride == 1:
            # a 1x1 conv is a matmul; oneDNN's conv1d is up to 8x slower on these (small batches of frames)
            y = torch.matmul(self.matrix().t(), cat)
            return y if self.module.bias is None else y + self.module.bias[:, None]
        if (
            self.groups == 1
            and self.kernel > 1
            and (n_out <= IM2COL_MAX_OUTPUTS or self.module.in_channels >= IM2COL_MIN_CHANNELS)
        ):
            # few outputs: reading the weights dominates, and one matmul reads them best
            cols = cat.unfold(-1, self.span, self.stride)[..., :: self.dilation]  # (b, C, n, k)
            y = cols.permute(0, 2, 3, 1).reshape(cat.shape[0], n_out, -1) @ self.matrix()
            if self.module.bias is not None:
                y = y + self.module.bias
            return y.transpose(1, 2)
        return F.conv1d(
            cat,
            self.module.weight,
            self.module.bias,
            stride=self.stride,
            dilation=self.dilation,
            groups=self.groups,
        )

    def constant(self, value):
        w = self.module.weight.float()
        x = value[None, :, None].expand(1, w.shape[1] * self.groups, self.span).contiguous()
        bias = None if self.module.bias is None else self.module.bias.float()
        return F.conv1d(x, w, bias, dilation=self.dilation, groups=self.groups)[0, :, 0]


class ConvTranspose(StreamNode):
    """Streaming `nn.ConvTranspose1d` (dilation 1): overlap-add of the tail kept per row.

    Each input sample adds `k` outputs; after a call the first `K*in_rate*stride` outputs can receive nothing
    more and are emitted, the rest (the tail, without bias) waits for the next call. The bias is added on
    emission. The offline `padding` crop is a fixed time offset; `output_padding` only changes the offline
    length, which the end mask applies.

    Computed as one matmul (inputs x kernel taps) and a sum of `ceil(k / stride)` shifted blocks: with few
    input frames per call, `conv_transpose1d` takes a slow path (10x slower on CPU for the DAC decoder).
    Committed and speculative inputs are overlap-added separately (each tap once): the state takes the
    committed part only.
    """

    def __init__(self, module: nn.ConvTranspose1d, key: str = "") -> None:
        if module.dilation[0] != 1 or module.groups != 1:
            raise ValueError("streaming transposed conv supports dilation 1 and groups 1 only")
        self.module = module
        self.key = key
        self.kernel = module.kernel_size[0]
        self.stride = module.stride[0]
        self.padding = module.padding[0]
        self.output_padding = module.output_padding[0]
        self.blocks = -(-self.kernel // self.stride)  # stride-long blocks of the (zero-extended) kernel
        self.tail = (self.blocks - 1) * self.stride
        self._cache: dict = {}  # prepared kernels (`derived`)

    def bind(self, in_offset, in_rate, spec_in, states):
        self.in_offset, self.in_rate = in_offset, in_rate
        self.out_offset = in_offset * self.stride - self.padding
        self.out_rate = in_rate * self.stride
        self.spec_out = self._spec(self._len, in_offset, in_rate, spec_in)
        if self.tail:
            states[self.key] = torch.zeros(self.module.out_channels, self.tail)
        return self.out_offset, self.out_rate, self.spec_out

    def _len(self, n: int) -> int:
        return (n - 1) * self.stride - 2 * self.padding + self.kernel + self.output_padding if n > 0 else 0

    def trim(self, need):
        return -(-super().trim(need) // self.stride)  # input i reaches outputs up to block i (see `step`)

    def skip(self, first, frames):
        # output j receives inputs j // stride - (blocks - 1) .. j // stride; so does the next state (the
        # outputs from the committed inputs' end on)
        return self._plan(frames, self._reads_from(first // self.stride, frames, self.blocks - 1), first)

    def prepare(self):
        self.matrix()

    def out_len(self, n):
        full = (n - 1) * self.stride - 2 * self.padding + self.kernel + self.output_padding
        return torch.where(n > 0, full, torch.zeros_like(full))

    def matrix(self) -> torch.Tensor:
        """The kernel as (C_in, C_out * blocks * stride), zero-extended to whole blocks (computed once)."""
        pad = self.blocks * self.stride - self.kernel
        return derived(
            self._cache,
            "matrix",
            self.module.weight,
            lambda w: F.pad(w, (0, pad)).reshape(w.shape[0], -1).contiguous(),
        )

    def step(self, x, n, state, new, st):
        s, c_out, m = self.stride, self.module.out_channels, self.blocks
        i0, first = self._first(st)  # x starts at input i0; outputs from `first` on
        k_in = max(0, st.frames * self.in_rate - i0)  # committed inputs given
        n_out = self._n_out(st)
        # speculative inputs that can reach the emitted outputs (the rest would only feed the tail)
        n_in = min(
            x.shape[-1], st.frames * self.in_rate - i0 + (-(-self.spec_out // s) if st.speculate else 0)
        )
        taps = (x[..., :n_in].transpose(1, 2) @ self.matrix()).view(x.shape[0], n_in, c_out, m, s)
        y = self._overlap(taps[:, :k_in])  # (b, C, (k_in + m - 1) * s), times from i0 * s on
        if self.tail:
            if not i0:  # (skipping past the first blocks: the kept tail reaches no output computed)
                y = torch.cat([y[..., : self.tail] + state[self.key], y[..., self.tail :]], dim=-1)
            if st.frames:
                new[self.key] = y[..., k_in * s : k_in * s + self.tail]
        if n_out <= first:  # a committing call that only writes the state
            return y[..., :0], n
        if n_in > k_in:
            spec = self._overlap(taps[:, k_in:])  # times from (i0 + k_in) * s on
            y = torch.cat(
                [y[..., : k_in * s], y[..., k_in * s :] + spec[..., : self.tail], spec[..., self.tail :]], -1
            )
        y = y[..., first - i0 * s : n_out - i0 * s]
        if y.shape[-1] < n_out - first:
            y = F.pad(y, (0, n_out - first - y.shape[-1]))
        if self.module.bias is not None:
            y = y + self.module.bias[:, None]
        if not st.masking:  # lengths only matter to the masks
            return y, n
        n = self.out_len(n)
        return self._mask(y, n, st), n

    @staticmethod
    def _overlap(taps: torch.Tensor) -> torch.Tensor:
        """(b, n, C, m, s) per-input kernel blocks -> (b, C, (n + m - 1) * s): output block j is the sum over i
        of input j - i's block i."""
        b, n, c_out, m, s = taps.shape
        y = F.pad(taps[:, :, :, 0], (0, 0, 0, 0, 0, m - 1))
        for i in range(1, m):
            y = y + F.pad(taps[:, :, :, i], (0, 0, 0, 0, i, m - 1 - i))
        return y.permute(0, 2, 1, 3).reshape(b, c_out, (n + m - 1) * s)


class Delay(StreamNode):
    """Delays a signal by `delay` samples (the skip path of a residual unit)."""

    def __init__(self, channels: int, delay: int, key: str = "") -> None:
        self.channels = channels
        self.delay = delay
        self.key = key

    def bind(self, in_offset, in_rate, spec_in, states):
        self.in_offset, self.in_rate, self.out_rate = in_offset, in_rate, in_rate
        self.out_offset = in_offset - self.delay
        self.spec_out = spec_in + self.delay
        if self.delay:
            states[self.key] = torch.zeros(self.channels, self.delay)
        return self.out_offset, in_rate, self.spec_out

    def skip(self, first, frames):
        # output j is input j - delay
        return self._plan(frames, self._reads_from(first, frames, self.delay), first)

    def add_to(self, y: torch.Tensor, x: torch.Tensor, state: State, new: State, st: Step) -> torch.Tensor:
        """`y + delayed x` over y's length, in place on `y` (a fresh branch output): the delayed signal is
        the kept tail then x, so no concatenated copy of x is made (a residual unit's skip path). Skipping,
        x starts at input `x0` and y at output `first`."""
        d, k = self.delay, st.frames * self.in_rate
        x0, first = self._first(st)
        if not d:
            return y.add_(x[..., first - x0 : first - x0 + y.shape[-1]])
        old = state[self.key]
        new[self.key] = (
            x[..., k - d - x0 : k - x0] if k >= d else torch.cat([old[..., k:], x[..., :k]], dim=-1)
        )
        # add_ on the views: `y[...] += v` also calls copy_ of each view onto itself (Python's setitem)
        head = min(max(0, d - first), y.shape[-1])  # outputs still from the kept tail
        if head:
            y[..., :head].add_(old[..., first : first + head])
        if y.shape[-1] > head:
            start = first + head - d - x0
            y[..., head:].add_(x[..., start : start + y.shape[-1] - head])
        return y


class Chain(StreamNode):
    """Nodes applied one after the other."""

    def __init__(self, nodes: list[StreamNode], key: str = "") -> None:
        self.children = nodes
        self.key = key

    def bind(self, in_offset, in_rate, spec_in, states):
        self.in_offset, self.in_rate = in_offset, in_rate
        offset, rate, spec = in_offset, in_rate, spec_in
        for node in self.children:
            offset, rate, spec = node.bind(offset, rate, spec, states)
        self.out_offset, self.out_rate, self.spec_out = offset, rate, spec
        return offset, rate, spec

    def out_len(self, n):
        for node in self.children:
            n = node.out_len(n)
        return n

    def trim(self, need):
        for node in reversed(self.children):
            node.reads = need = node.trim(need)
        self.spec_out = self.children[-1].spec_out
        return need

    def skip(self, first, frames):
        out = first
        for node in reversed(self.children):
            first = node.skip(first, frames)
        return self._plan(frames, first, out)

    def step(self, x, n, state, new, st):
        for node in self.children:
            if st.speculate and node.reads is not None:
                cut = st.frames * node.in_rate + node.reads - node._first(st)[0]
                if x.shape[-1] > cut:  # a view: what later layers use (no call when it is all of x)
                    x = x[..., :cut]
            x, n = node.step(x, n, state, new, st)
        return x, n

    def nodes(self):
        return [n for child in self.children for n in child.nodes()]

    def constant(self, value):
        for node in self.children:
            value = node.constant(value)
        return value


class Residual(StreamNode):
    """`x + branch(x)` with `x` delayed by the branch's delay (aligned branches)."""

    def __init__(self, branch: Chain, channels: int, key: str = "") -> None:
        self.branch = branch
        self.key = key
        self.shortcut = Delay(channels, 0, key=f"{key}.skip")

    def bind(self, in_offset, in_rate, spec_in, states):
        # bind the branch first to learn its delay, then the shortcut with that delay
        self.in_offset, self.in_rate = in_offset, in_rate
        offset, rate, spec = self.branch.bind(in_offset, in_rate, spec_in, states)
        if rate != in_rate:
            raise ValueError("a residual branch must keep the sample rate")
        self.shortcut.delay = in_offset - offset
        self.shortcut.bind(in_offset, in_rate, spec_in, states)
        self.out_offset, self.out_rate, self.spec_out = offset, rate, spec
        return offset, rate, spec

    def trim(self, need):
        reads = self.branch.trim(need)
        self.spec_out = self.shortcut.spec_out = self.branch.spec_out
        # the shortcut adds x to the branch's outputs, `delay` samples later
        return max(reads, self.spec_out - self.shortcut.delay)

    def skip(self, first, frames):
        x0 = min(self.branch.skip(first, frames), self.shortcut.skip(first, frames))
        self.shortcut._plan(frames, x0, first)  # the shortcut is handed x as the unit gets it
        return self._plan(frames, x0, first)

    def step(self, x, n, state, new, st):
        x0 = self._first(st)[0]
        b0 = self.branch._first(st)[0]
        y, _ = self.branch.step(x[..., b0 - x0 :] if b0 > x0 else x, n, state, new, st)
        return self.shortcut.add_to(y, x, state, new, st), n

    def nodes(self):
        return [self, *self.branch.nodes(), self.shortcut]


# Module type -> streaming layer (key = the module's path). Residual units and chains are added by graph.py,
# which reads them off the module's forward.
STREAM_LAYERS: dict[type[nn.Module], Callable[[nn.Module, str], StreamNode]] = {
    nn.Conv1d: lambda m, key: Conv(m, key),
    nn.ConvTranspose1d: lambda m, key: ConvTranspose(m, key),
}
