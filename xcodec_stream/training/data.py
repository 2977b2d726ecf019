"""Random fixed-length crops of a speech corpus (folders of wav files), held in memory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

logger = logging.getLogger(__name__)


class CropSampler:
    """Draws batches of `segment` samples from the corpus: a file with probability proportional to its length,
    a uniform offset, a random loudness (RMS 0.02-0.2, as microphones give), silence drawn again."""

    def __init__(
        self, folders: str | Path | list, segment: int, sample_rate: int, min_rms: float, seed: int
    ) -> None:
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        files = [f for folder in folders for f in sorted(Path(folder).rglob("*.wav"))]
        if not files:
            names = ", ".join(map(str, folders))
            raise FileNotFoundError(
                f"no .wav files under {names} (build a corpus with `xcodec-stream corpus`)"
            )
        clips = []
        for path in files:
            audio, sr = sf.read(path, dtype="float32", always_2d=True)
            if sr != sample_rate:
                raise ValueError(f"{path}: {sr} Hz, the corpus must be {sample_rate} Hz")
            audio = audio.mean(axis=1)
            if len(audio) >= segment:
                clips.append(audio)
        if not clips:
            raise ValueError(f"no clip is as long as one training segment ({segment} samples)")
        self.clips = clips
        self.segment = segment
        self.min_rms = min_rms
        lengths = np.array([len(c) - segment + 1 for c in clips], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.rng = np.random.default_rng(seed)
        self.seconds = sum(len(c) for c in clips) / sample_rate
        logger.info("corpus: %d clips, %.1f minutes", len(clips), self.seconds / 60)

    def crop(self) -> np.ndarray:
        for _ in range(100):
            clip = self.clips[self.rng.choice(len(self.clips), p=self.weights)]
            start = int(self.rng.integers(0, len(clip) - self.segment + 1))
            x = clip[start : start + self.segment]
            rms = float(np.sqrt(np.mean(x**2)))
            if rms >= self.min_rms:
                target = 10 ** self.rng.uniform(np.log10(0.02), np.log10(0.2))
                return np.clip(x * (target / rms), -1.0, 1.0)
        return x  # a corpus of near-silence: train on it rather than loop forever

    def batch(self, batch_size: int) -> torch.Tensor:
        """(batch_size, 1, segment) float32."""
        return torch.from_numpy(np.stack([self.crop() for _ in range(batch_size)])[:, None, :].copy())

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
