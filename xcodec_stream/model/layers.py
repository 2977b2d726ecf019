"""Small building blocks shared by the model parts: Snake activation, weight-norm folding, weight-derived
tensors computed once."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def snake(x: torch.Tensor, alpha: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
    """x + 1/(alpha + 1e-9) * sin(alpha * x)^2 (`inverse`: 1/(alpha + 1e-9), computed once by the caller).

    The same elementwise ops as transformers (so bit-identical results: only commutative operands are
    swapped), done in place on one temporary: half the memory traffic of the out-of-place expression,
    which matters because Snake runs on every sample of every channel of the DAC (about half of the
    decoder's time). A fused `addcmul` would be faster still but rounds differently.
    """
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        # training: in-place sin_ would overwrite what autograd needs for the backward pass
        return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
    y = torch.mul(x, alpha)
    y.sin_()
    y.pow_(2)
    y.mul_((alpha + 1e-9).reciprocal() if inverse is None else inverse)
    return y.add_(x)


class Snake1d(nn.Module):
    """Snake activation with one learned frequency `alpha` per channel, shape (1, C, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))
        self._cache: dict = {}  # 1/(alpha + 1e-9) (`derived`): two fewer calls per use, on every streaming step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.alpha.requires_grad:
            return snake(x, self.alpha)
        return snake(x, self.alpha, self.inverse())

    def inverse(self) -> torch.Tensor:
        """1/(alpha + 1e-9), computed once (streaming graphs prepare it before any compiled step)."""
        return derived(self._cache, "inverse", self.alpha, lambda a: (a + 1e-9).reciprocal())


class ResidualUnit(nn.Module):
    """Base pattern of the residual units: `forward(x) = x + branch(x)`, lengths unchanged.

    Subclasses define `branch`. The streaming engine calls `branch` itself so that it can delay `x`
    by the branch's lookahead before adding.
    """

    def branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x).add_(x)  # == x + branch(x), bit for bit, without another buffer


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor, dim: int) -> torch.Tensor:
    """Plain weight from a weight-norm pair: g * v / ||v|| (norm over every axis but `dim`).

    Uses the same kernel as torch's weight-norm parametrization, so the folded weight is bit-identical
    to the one transformers computes on every forward.
    """
    if weight_g.dim() != weight_v.dim():
        raise ValueError(f"weight_g has shape {tuple(weight_g.shape)} but weight_v {tuple(weight_v.shape)}")
    expected = [1] * weight_v.dim()
    expected[dim] = weight_v.shape[dim]
    if list(weight_g.shape) != expected:
        raise ValueError(
            f"weight_g has shape {tuple(weight_g.shape)}, expected {tuple(expected)} for weight_v "
            f"{tuple(weight_v.shape)} normalised along dim {dim}"
        )
    return torch._weight_norm(weight_v.float(), weight_g.float(), dim).to(weight_v.dtype)


def derived(
    cache: dict, name: object, weight: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """`make(weight)` computed once and kept in `cache[name]` (a plain dict: never a buffer, never in a
    state_dict), again whenever the weight's storage, dtype or device changes (loading or `.to()` replaces
    the storage) or it is changed in place (an optimizer step: its version counter; inference tensors have
    none, and nothing changes them in place). Inside a compiled step the value prepared eagerly beforehand
    is read as is: dynamo cannot trace the storage check."""
    hit = cache.get(name)
    if hit is not None and torch.compiler.is_compiling():
        return hit[1]
    version = None if weight.is_inference() else weight._version
    key = (weight.data_ptr(), weight.dtype, weight.device, version)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, make(weight.detach()))
    return hit[1]
