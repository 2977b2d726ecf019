"""X-Codec's semantic encoder: conv k3, then blocks of ELU residual units and a conv, on HuBERT/WavLM features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xcodec_stream.model.layers import ResidualUnit


class SemanticResidualUnit(ResidualUnit):
    """x + conv2(elu(conv1(elu(x)))): conv1 k=`kernel_size` dilated, 'same' padding, no bias; conv2 k1, no bias."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.activation = nn.ELU()
        padding = ((kernel_size - 1) // 2) * dilation
        self.conv1 = nn.Conv1d(
            channels, channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1, bias=False)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.activation(self.conv1(self.activation(x))))


class SemanticEncoderBlock(nn.Module):
    """Residual units (one per dilation), then conv k3 stride 1 (with bias) to `out_channels`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        unit_kernel_size: int,
        dilations: Sequence[int],
        stride: int = 1,
    ) -> None:
        super().__init__()
        self.res_units = nn.ModuleList(
            [SemanticResidualUnit(in_channels, unit_kernel_size, d) for d in dilations]
        )
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.res_units:
            x = unit(x)
        return self.conv(x)


class SemanticEncoder(nn.Module):
    """(B, H, T) semantic features -> (B, H', T): conv k=`kernel_size` (no bias), then the blocks."""

    def __init__(
        self,
        hidden_size: int,
        kernel_size: int,
        channel_ratios: Sequence[float],
        strides: Sequence[int],
        unit_kernel_size: int,
        block_dilations: Sequence[int],
    ) -> None:
        super().__init__()
        if len(strides) != len(channel_ratios):
            raise ValueError("Number of strides must match the number of channel_ratios.")
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size, 1, kernel_size // 2, bias=False)
        blocks = []
        in_ch = hidden_size
        for ratio, stride in zip(channel_ratios, strides, strict=True):
            out_ch = int(hidden_size * ratio)
            blocks.append(SemanticEncoderBlock(in_ch, out_ch, unit_kernel_size, block_dilations, stride))
            in_ch = out_ch
        self.conv_blocks = nn.ModuleList(blocks)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        for block in self.conv_blocks:
            x = block(x)
        return x
