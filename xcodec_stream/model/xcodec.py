"""The X-Codec model: acoustic + semantic encoders, fc, residual VQ, fc2, acoustic decoder (inference only)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.acoustic import AcousticDecoder, AcousticEncoder
from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.quantizer import ResidualVectorQuantizer
from xcodec_stream.model.semantic import SemanticModel
from xcodec_stream.model.semantic_encoder import SemanticEncoder

if TYPE_CHECKING:  # the streaming engine imports the model; import it back lazily
    from xcodec_stream.streaming.decoder import StreamingDecoder
    from xcodec_stream.streaming.encoder import StreamingEncoder


class _Output:
    """Outputs read like transformers' ModelOutput: `out.audio_codes`, `out["audio_codes"]` or `out[0]`."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]

    def __getitem__(self, key: int | str):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())


@dataclass
class XcodecEncoderOutput(_Output):
    audio_codes: torch.Tensor
    """(B, n_q, F) int64."""


@dataclass
class XcodecDecoderOutput(_Output):
    audio_values: torch.Tensor
    """(B, 1, hop * F)."""


@dataclass
class XcodecOutput(_Output):
    audio_codes: torch.Tensor
    """(B, n_q, F) int64."""
    audio_values: torch.Tensor
    """(B, 1, T): decoded audio cropped to the input length."""


class XcodecModel(nn.Module):
    """X-Codec inference with transformers' numbers, in plain PyTorch.

    `XcodecModel.from_pretrained(id_or_dir)` loads a checkpoint in transformers' format (hub id, local
    directory, or `random:tiny` / `random:full`). The sub-steps of `encode` and `decode` are public so that
    the streaming engine reuses them: `semantic_features`, `encode_semantic`, `encode_acoustic`,
    `encode_latent`, `latent` (all of them to the pre-VQ latent), `quantize`, `dequantize`, `decode_latent`.
    """

    def __init__(self, config: XcodecConfig) -> None:
        super().__init__()
        self.config = config
        self.name_or_path: str | None = None  # set by from_pretrained
        self.pad = config.hop_length // 2
        ac = config.acoustic_model_config
        self.acoustic_encoder = AcousticEncoder(
            ac.encoder_hidden_size, ac.downsampling_ratios, ac.hidden_size
        )
        self.acoustic_decoder = AcousticDecoder(ac.hidden_size, ac.decoder_hidden_size, ac.upsampling_ratios)
        self.encoder_semantic = SemanticEncoder(
            config.semantic_hidden_size,
            config.kernel_size,
            config.channel_ratios,
            config.strides,
            config.unit_kernel_size,
            config.block_dilations,
        )
        self.semantic_model = SemanticModel(config.semantic_model_config)
        self.fc = nn.Linear(config.hidden_size, config.hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, ac.hidden_size)
        self.quantizer = ResidualVectorQuantizer(
            config.num_quantizers, config.codebook_size, config.codebook_dim
        )
        self.eval()
        self.requires_grad_(False)

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        id_or_dir: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
    ) -> XcodecModel:
        """Load a checkpoint: a local directory (config.json + model.safetensors, transformers' format), a
        Hugging Face hub id (through huggingface_hub, its cache and HF_HUB_OFFLINE), or `random:tiny` /
        `random:full` (seeded random weights, with a loud warning)."""
        from xcodec_stream.model.loading import from_pretrained

        return from_pretrained(id_or_dir, dtype=dtype, device=device)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors in the format transformers' XcodecModel loads."""
        from xcodec_stream.model.loading import save_pretrained

        return save_pretrained(self, directory)

    # ---- properties ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def num_quantizers_for_bandwidth(self, bandwidth: float | None = None) -> int:
        return self.config.bandwidth_to_num_quantizers(bandwidth)

    # ---- sub-steps (shared with streaming) ---------------------------------------------------------
    def semantic_features(self, input_values_padded: torch.Tensor) -> torch.Tensor:
        """(B, T + 2*pad) or (B, 1, T + 2*pad) waveform already padded -> (B, T_sem, H): mean of all hidden states."""
        if input_values_padded.dim() == 3:
            input_values_padded = input_values_padded[:, 0, :]
        return self.semantic_model(input_values_padded)

    def encode_semantic(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T_sem, H) semantic features -> (B, H, T_sem) semantic latent."""
        return self.encoder_semantic(features.transpose(1, 2))

    def encode_acoustic(self, input_values: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B, 1, T) -> (B, hidden, F). With `num_frames` (the semantic frame count), the input is padded by
        hop/2 on each side when the plain encoder would give another count, as transformers does."""
        if (
            num_frames is not None
            and self.acoustic_encoder.output_length(input_values.shape[-1]) != num_frames
        ):
            input_values = F.pad(input_values, (self.pad, self.pad))
        return self.acoustic_encoder(input_values)

    def encode_latent(self, e_acoustic: torch.Tensor, e_semantic: torch.Tensor) -> torch.Tensor:
        """(B, 256, F), (B, 768, F) -> fc(concat) (B, 1024, F)."""
        embeddings = torch.cat([e_acoustic.to(e_semantic.device), e_semantic], dim=1)
        return self.fc(embeddings.transpose(1, 2)).transpose(1, 2)

    def latent(self, input_values: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) waveform -> (B, D, F) latent before quantization: `encode` without the VQ (and without
        inference mode, so that training backpropagates through it)."""
        features = self.semantic_features(F.pad(input_values[:, 0, :], (self.pad, self.pad)))
        e_semantic = self.encode_semantic(features)
        e_acoustic = self.encode_acoustic(input_values, num_frames=e_semantic.shape[2])
        return self.encode_latent(e_acoustic, e_semantic)

    def quantize(self, embeddings: torch.Tensor, num_quantizers: int) -> torch.Tensor:
        """(B, D, F) -> (B, n_q, F) int64 codes."""
        return self.quantizer.quantize(embeddings, num_quantizers)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n_q, F) -> (B, D, F): sum of the first n_q codebooks' vectors."""
        return self.quantizer.dequantize(codes)

    def decode_latent(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, D, F) quantized latent -> fc2 -> DAC decoder -> (B, 1, hop * F)."""
        acoustic = self.fc2(quantized.transpose(1, 2)).transpose(1, 2)
        return self.acoustic_decoder(acoustic)

    # ---- streaming ----------------------------------------------------------------------------------
    def streaming_encoder(
        self,
        batch_size: int = 1,
        bandwidth: float | None = None,
        latency: str | object = "balanced",
        compile: str | bool = "eager",
    ) -> StreamingEncoder:
        """A chunked encoder over `batch_size` session slots; `latency`: "exact" | "balanced" | "low" or a
        `StreamingOptions`; `compile`: "eager", "compile", "cuda-graphs" or "auto". See
        `xcodec_stream.streaming.encoder.StreamingEncoder`."""
        from xcodec_stream.streaming.encoder import StreamingEncoder

        return StreamingEncoder(
            self, batch_size=batch_size, bandwidth=bandwidth, latency=latency, compile=compile
        )

    def streaming_decoder(
        self, batch_size: int = 1, latency: str | object = "balanced", compile: str | bool = "eager"
    ) -> StreamingDecoder:
        """A chunked decoder over `batch_size` session slots. See
        `xcodec_stream.streaming.decoder.StreamingDecoder`."""
        from xcodec_stream.streaming.decoder import StreamingDecoder

        return StreamingDecoder(self, batch_size=batch_size, latency=latency, compile=compile)

    # ---- public API ---------------------------------------------------------------------------------
    def _check_input(self, input_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_values, torch.Tensor):
            raise TypeError(
                f"input_values must be a torch.Tensor (B, 1, T), got {type(input_values).__name__}"
            )
        if input_values.dim() != 3:
            raise ValueError(
                f"input_values must have shape (batch, 1, samples), got {tuple(input_values.shape)}"
            )
        if input_values.shape[1] != 1:
            raise ValueError(f"Audio must be mono, but got {input_values.shape[1]} channels")
        if input_values.shape[-1] == 0:
            raise ValueError("input_values is empty")
        return input_values.to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def encode(self, input_values: torch.Tensor, bandwidth: float | None = None) -> XcodecEncoderOutput:
        """(B, 1, T) 16 kHz waveform -> codes (B, n_q, ceil-ish(T / hop)) for `bandwidth` kbps (None: highest)."""
        num_quantizers = self.config.bandwidth_to_num_quantizers(bandwidth)
        embeddings = self.latent(self._check_input(input_values))
        return XcodecEncoderOutput(audio_codes=self.quantize(embeddings, num_quantizers))

    @torch.inference_mode()
    def decode(self, audio_codes: torch.Tensor) -> XcodecDecoderOutput:
        """Codes (B, n_q, F) -> waveform (B, 1, hop * F)."""
        if not isinstance(audio_codes, torch.Tensor):
            audio_codes = torch.as_tensor(audio_codes)
        if audio_codes.dim() != 3:
            raise ValueError(
                f"audio_codes must have shape (batch, num_quantizers, frames), got {tuple(audio_codes.shape)}"
            )
        if audio_codes.dtype.is_floating_point or audio_codes.dtype == torch.bool:
            raise ValueError(f"audio_codes must be integers, got {audio_codes.dtype}")
        if not 1 <= audio_codes.shape[1] <= self.config.num_quantizers:
            raise ValueError(
                f"audio_codes has {audio_codes.shape[1]} quantizers; this model has 1..{self.config.num_quantizers}"
            )
        if audio_codes.numel() and (
            int(audio_codes.min()) < 0 or int(audio_codes.max()) >= self.config.codebook_size
        ):
            raise ValueError(f"audio_codes must be in 0..{self.config.codebook_size - 1}")
        codes = audio_codes.to(device=self.device, dtype=torch.long)
        return XcodecDecoderOutput(audio_values=self.decode_latent(self.dequantize(codes)))

    @torch.inference_mode()
    def forward(
        self,
        input_values: torch.Tensor,
        audio_codes: torch.Tensor | None = None,
        bandwidth: float | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> XcodecOutput:
        """Encode (unless `audio_codes` is given) and decode; audio cropped to the input length.

        `padding_mask` (from the feature extractor) is accepted so that `model(**inputs)` works, and ignored,
        as transformers ignores it.
        """
        length = input_values.shape[-1]
        if audio_codes is None:
            audio_codes = self.encode(input_values, bandwidth).audio_codes
        audio_values = self.decode(audio_codes).audio_values[..., :length]
        return XcodecOutput(audio_codes=audio_codes, audio_values=audio_values)
