"""The floor set by a step's matrix-product shapes: every matmul, conv and attention call a run makes,
recorded with its shapes, then timed alone.

The FLOP bound assumes every FLOP runs at large-matmul speed; a streaming step's products are thin (a few
frames against each weight matrix), where BLAS runs far below that speed. Timing each recorded call alone
at its own shapes (inputs warm in cache, nothing else running) gives what these products cost by
themselves: the part of a step no amount of overhead removal can take away without changing the shapes
(more rows per product: larger steps or more sessions per step).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from xcodec_stream.bench.report import sync

_aten = torch.ops.aten
# The products: everything else a step does (elementwise work, copies, Python) is what the floor excludes.
PRODUCTS = {
    _aten.mm,
    _aten.addmm,
    _aten.bmm,
    _aten.baddbmm,
    _aten.convolution,
    _aten._scaled_dot_product_flash_attention_for_cpu,
    _aten._scaled_dot_product_efficient_attention,
    _aten._scaled_dot_product_flash_attention,
}


def _spec(a: object) -> object:
    if isinstance(a, torch.Tensor):
        return ("tensor", tuple(a.shape), tuple(a.stride()), a.dtype, a.device.type)
    if isinstance(a, (list, tuple)):
        return tuple(_spec(x) for x in a)
    return a


def _make(spec: object) -> object:
    if isinstance(spec, tuple) and spec and spec[0] == "tensor":
        _, shape, stride, dtype, device = spec
        t = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        return t.normal_() if dtype.is_floating_point else t.zero_()
    if isinstance(spec, tuple):
        return [_make(x) for x in spec]
    return spec


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in PRODUCTS:
            self.calls[(func, _spec(args), _spec(tuple(sorted(kwargs.items()))))] += 1
        else:
            # composite ops (aten.linear under inference mode) reach the mode whole: split them into the
            # products they run, as torch's FLOP counter does
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


def record(fn: Callable[[], object]) -> Counter:
    """Run `fn` once; returns {(op, argument specs, keyword specs): number of calls} for its products."""
    with _Recorder() as rec:
        fn()
    return rec.calls


def replay_seconds(calls: Counter, reps: int = 5) -> float:
    """Seconds the recorded products take, each timed alone at its shapes (best of `reps` per shape)."""
    total = 0.0
    with torch.inference_mode():
        for (func, arg_specs, kw_specs), count in calls.items():
            args = [_make(a) for a in arg_specs]
            kwargs = {k: _make(v) for k, v in kw_specs}
            device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
            func(*args, **kwargs)  # warm-up: kernels chosen, inputs in cache
            best = float("inf")
            for _ in range(reps):
                sync(device)
                t0 = time.perf_counter()
                func(*args, **kwargs)
                sync(device)
                best = min(best, time.perf_counter() - t0)
            total += count * best
    return total
