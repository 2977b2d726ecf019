"""Reconstruction and adversarial losses of DAC / X-Codec training."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

# DAC's multi-scale mel loss: short windows for transients, long ones for pitch harmonics.
MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BINS = (5, 10, 20, 40, 80, 160, 320)


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of L1(log10 mel(x), log10 mel(y)), power spectrogram clamped at 1e-5 (DAC)."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # the longest windows leave some low mel bands without an FFT bin: harmless, as in DAC
            warnings.simplefilter("ignore", UserWarning)
            self.mels = nn.ModuleList(
                torchaudio.transforms.MelSpectrogram(
                    sample_rate=sample_rate,
                    n_fft=win,
                    win_length=win,
                    hop_length=win // 4,
                    n_mels=bins,
                    power=2.0,
                    center=True,
                    f_min=0.0,
                    f_max=sample_rate / 2,
                )
                for win, bins in zip(MEL_WINDOWS, MEL_BINS, strict=True)
            )

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loss = y.new_zeros(())
        for mel in self.mels:
            loss = loss + F.l1_loss(torch.log10(mel(y).clamp(min=1e-5)), torch.log10(mel(x).clamp(min=1e-5)))
        return loss / len(self.mels)


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN (HiFi-GAN, DAC): real scores towards 1, fake towards 0."""
    return sum(torch.mean((1 - r) ** 2) + torch.mean(f**2) for r, f in zip(real, fake, strict=True))


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.mean((1 - f) ** 2) for f in fake)


def feature_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminators' hidden features of real and generated audio."""
    total, count = 0.0, 0
    for r_maps, f_maps in zip(real, fake, strict=True):
        for r, f in zip(r_maps, f_maps, strict=True):
            total = total + F.l1_loss(f, r.detach())
            count += 1
    return total / max(count, 1)
