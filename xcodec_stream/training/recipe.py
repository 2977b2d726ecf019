"""The speech-small recipe: the model's shape and the training hyperparameters, in one place.

The shape is chosen to fit 20 MB of float32 safetensors (transformers' layout stores every codebook twice,
as `embed` and `embed_avg`) and to train in under two hours on a 2-core CPU. Most of the budget goes to the
acoustic decoder, which is what limits a small codec's quality; the semantic branch is a tiny HuBERT
frozen at its seeded random initialisation (see the model card for why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from xcodec_stream.model.config import AcousticModelConfig, SemanticModelConfig, XcodecConfig


def speech_small_config() -> XcodecConfig:
    """hop 320 at 16 kHz (50 frames/s), 8 codebooks of 1024 (0.5-4 kbps) as the public checkpoints."""
    return XcodecConfig(
        acoustic_model_config=AcousticModelConfig(
            encoder_hidden_size=16, decoder_hidden_size=384, hidden_size=64
        ),
        semantic_model_config=SemanticModelConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4,
        ),
    )


@dataclass
class TrainConfig:
    """Hyperparameters of `xcodec-stream train` (defaults: the recipe of checkpoints/speech-small)."""

    steps: int = 3000
    batch_size: int = 8
    segment_seconds: float = 0.64  # 32 frames
    lr: float = 5e-4
    betas: tuple[float, float] = (0.8, 0.99)
    warmup_steps: int = 100
    final_lr_fraction: float = 0.05  # cosine decay to this fraction: late decay buys PESQ
    grad_clip: float = 100.0
    vq_start: int = 300  # steps of plain autoencoder before the codebooks are seeded (k-means) and used
    gan_start: int = 1000  # steps before the discriminators join (a step costs 1.5x with them)
    # steps before gan_start in which the discriminators already learn on the generator's output while the
    # generator gets no adversarial loss yet: a fresh discriminator's first gradients are noise, which
    # matters when the generator is already trained (`--init-from`)
    disc_warmup: int = 0
    quantizer_dropout: float = 0.5  # fraction of steps trained with a random 1..n_q codebooks
    ema_decay: float = 0.99
    # EMA usage below which a code is re-seeded from the batch. Below a code's mean usage per batch (256
    # frames over 1024 codes: 0.25), or most codes are re-seeded at every step (stage 1 of
    # checkpoints/speech-small ran with 1.0 and did that); 0.02 re-seeds a code after ~400 unused steps.
    dead_code_threshold: float = 0.02
    mel_weight: float = 15.0
    waveform_weight: float = 1.0
    adversarial_weight: float = 1.0
    feature_weight: float = 2.0
    commitment_weight: float = 0.25
    seed: int = 0
    checkpoint_every: int = 250
    min_rms: float = 3e-3  # crops quieter than this (silence) are drawn again

    def to_dict(self) -> dict:
        return asdict(self)
