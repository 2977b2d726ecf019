"""Small discriminators for CPU budgets: multi-period (waveform folded by a period, HiFi-GAN) and
multi-resolution (log-magnitude STFTs, UnivNet / DAC). Channel counts are a quarter to an eighth of
HiFi-GAN's / UnivNet's, and the STFT discriminators stride over frequency from their first layer: at full
width they cost more than the codec itself on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

PERIODS = (2, 3, 5, 7, 11)
FFT_SIZES = (256, 512, 1024)


def _scores_and_features(
    convs: nn.ModuleList, post: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv stack then a 1-channel conv: the flattened scores and every layer's output (for the
    feature-matching loss)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.period = period
        layers, c_in = [], 1
        for c in channels:
            layers.append(weight_norm(nn.Conv2d(c_in, c, (5, 1), (3, 1), padding=(2, 0))))
            c_in = c
        layers.append(weight_norm(nn.Conv2d(c_in, c_in, (5, 1), 1, padding=(2, 0))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(c_in, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        x = x.view(b, c, -1, self.period)
        return _scores_and_features(self.convs, self.post, x)


class ResolutionDiscriminator(nn.Module):
    def __init__(self, n_fft: int, channels: int = 16) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(1, channels, (3, 9), (1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4))),
                weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
            ]
        )
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(x[:, 0], self.n_fft, self.n_fft // 4, window=self.window, return_complex=True).abs()
        x = torch.log(spec.clamp(min=1e-5)).transpose(1, 2)[:, None]  # (B, 1, frames, bins)
        return _scores_and_features(self.convs, self.post, x)


class Discriminators(nn.Module):
    """All discriminators; returns one score map and one feature list per discriminator."""

    def __init__(self) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p) for p in PERIODS] + [ResolutionDiscriminator(n) for n in FFT_SIZES]
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        scores, features = [], []
        for d in self.discriminators:
            s, f = d(x)
            scores.append(s)
            features.append(f)
        return scores, features
