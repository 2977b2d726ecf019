"""The DAC acoustic branch of X-Codec: encoder (waveform -> latent) and decoder (latent -> waveform).

Module and attribute names equal transformers' state-dict keys (`acoustic_encoder.block.0.res_unit1.conv1`,
...). Convolutions are plain `nn.Conv1d` / `nn.ConvTranspose1d` with weight norm already folded, and
carry their symmetric padding themselves: the streaming engine reads `kernel_size`, `stride`,
`dilation`, `padding` (and `output_padding`) off each of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from xcodec_stream.model.layers import ResidualUnit, Snake1d

RESIDUAL_DILATIONS = (1, 3, 9)
RESIDUAL_KERNEL = 7


class DacResidualUnit(ResidualUnit):
    """x + conv2(snake2(conv1(snake1(x)))): conv1 k7 dilated with 'same' padding, conv2 k1.

    The branch keeps the length of `x`, so no crop is needed (transformers' crop is a no-op here).
    """

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        pad = ((RESIDUAL_KERNEL - 1) * dilation) // 2
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(
            channels, channels, kernel_size=RESIDUAL_KERNEL, dilation=dilation, padding=pad
        )
        self.snake2 = Snake1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at `in_channels`, Snake, strided conv k=2s to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.res_unit1 = DacResidualUnit(in_channels, dilation=RESIDUAL_DILATIONS[0])
        self.res_unit2 = DacResidualUnit(in_channels, dilation=RESIDUAL_DILATIONS[1])
        self.res_unit3 = DacResidualUnit(in_channels, dilation=RESIDUAL_DILATIONS[2])
        self.snake1 = Snake1d(in_channels)
        self.conv1 = nn.Conv1d(
            in_channels, out_channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))


class AcousticEncoder(nn.Module):
    """DAC encoder: conv k7 (1 -> C); one EncoderBlock per stride, channels doubling; Snake; conv k3 -> hidden."""

    def __init__(self, channels: int, strides: Sequence[int], hidden_size: int) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.conv1 = nn.Conv1d(1, channels, kernel_size=7, padding=3)
        blocks = []
        dim = channels
        for stride in self.strides:
            blocks.append(EncoderBlock(dim, dim * 2, stride))
            dim *= 2
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, hidden_size, kernel_size=3, padding=1)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, hidden_size, F)."""
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))

    def output_length(self, input_length: int) -> int:
        """Frames out for `input_length` samples in, computed as transformers does (every Conv1d in order)."""
        length = input_length
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                length = int(
                    (length + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) / m.stride[0] + 1
                )
        return length


class DecoderBlock(nn.Module):
    """Snake; ConvTranspose1d(k=2s, stride s, padding ceil(s/2), output_padding s%2); three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(in_channels)
        self.conv_t1 = nn.ConvTranspose1d(
            in_channels,
            out_channels,
            kernel_size=2 * stride,
            stride=stride,
            padding=math.ceil(stride / 2),
            output_padding=stride % 2,
        )
        self.res_unit1 = DacResidualUnit(out_channels, dilation=RESIDUAL_DILATIONS[0])
        self.res_unit2 = DacResidualUnit(out_channels, dilation=RESIDUAL_DILATIONS[1])
        self.res_unit3 = DacResidualUnit(out_channels, dilation=RESIDUAL_DILATIONS[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class AcousticDecoder(nn.Module):
    """DAC decoder as X-Codec uses it: conv k7; one DecoderBlock per stride, channels halving; Snake; conv k7 -> 1.

    No final tanh (X-Codec removes it), transposed convs with output_padding = stride % 2.
    """

    def __init__(self, in_channels: int, channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.conv1 = nn.Conv1d(in_channels, channels, kernel_size=7, padding=3)
        blocks = []
        dim = channels
        for stride in self.strides:
            blocks.append(DecoderBlock(dim, dim // 2, stride))
            dim //= 2
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, 1, kernel_size=7, padding=3)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.strides))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, F) -> (B, 1, hop * F)."""
        x = self.conv1(x)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))
