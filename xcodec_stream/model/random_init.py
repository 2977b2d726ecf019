"""Seeded random X-Codec models (`random:tiny`, `random:full`) made realistic enough to test something.

transformers' random init has two traps (see DESIGN.md): its RVQ codebooks are zeros (every code 0) and
its acoustic latent is 10^3-10^6 times smaller than the semantic one (codes ignore the acoustic branch).
So after a transformers-like init (torch.Generator, seed 0) the model is calibrated on a deterministic
speech-like signal synthesised here:
  (a) the acoustic encoder's last conv is scaled so that both halves of `fc`'s input have the same RMS;
  (b) each codebook is filled with mixtures of frames of the actual residual at its stage, plus a little
      noise, so codes vary from frame to frame and every quantizer is used;
  (c) the decoder's last conv is scaled so that decoded audio has an RMS of about 0.1.
Scale factors are rounded to 4 significant digits so that tiny float differences between machines do not
change them. The weights are deterministic for a given machine and thread count.

Building `random:full` takes several seconds on a small CPU, so full-size random models are cached as
safetensors under $XCODEC_STREAM_CACHE_DIR (default ~/.cache/xcodec-stream), keyed by a hash of the model
code, the config, the seed and the torch version. XCODEC_STREAM_RANDOM_CACHE=0 disables the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.layers import Snake1d
from xcodec_stream.model.semantic import Attention, PositionalConvEmbedding
from xcodec_stream.model.xcodec import XcodecModel

logger = logging.getLogger(__name__)

SEED = 0
TARGET_OUTPUT_RMS = 0.1
CALIBRATION_SECONDS = 8.0


class RandomWeightsWarning(UserWarning):
    """Raised (as a warning) whenever a model with random weights is made."""


def random_config(name: str) -> XcodecConfig:
    """`random:tiny`, `random:full`, `random:tiny-wavlm`, `random:full-wavlm`."""
    table = {
        "random:tiny": lambda: XcodecConfig.tiny("hubert"),
        "random:tiny-wavlm": lambda: XcodecConfig.tiny("wavlm"),
        "random:full": lambda: XcodecConfig(),
        "random:full-wavlm": lambda: XcodecConfig(semantic_model_config={"model_type": "wavlm"}),
    }
    if name not in table:
        raise ValueError(f"unknown random model {name!r}; use one of {', '.join(table)}")
    return table[name]()


def random_model(name: str, seed: int = SEED) -> XcodecModel:
    """A calibrated random-weight model; warns loudly that its audio is not speech."""
    config = random_config(name)
    message = f"{name}: random weights: audio will not be speech (for demos, tests and benchmarks only)"
    warnings.warn(message, RandomWeightsWarning, stacklevel=4)
    logger.warning(message)
    with torch.device("meta"):
        model = XcodecModel(config)
    cache = _cache_file(name, config, seed) if name.startswith("random:full") else None
    if cache is not None and cache.is_file():
        try:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(cache)), strict=True, assign=True)
            model.requires_grad_(False)
            model.eval()
            model.name_or_path = name
            return model
        except Exception as exc:  # a corrupt or stale cache file: rebuild
            logger.warning("ignoring random-weight cache %s: %s", cache, exc)
            with torch.device("meta"):
                model = XcodecModel(config)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    init_weights(model, gen)
    calibrate(model, gen)
    if cache is not None:
        _write_cache(model, cache)
    model.requires_grad_(False)
    model.eval()
    model.name_or_path = name
    return model


def _cache_file(name: str, config: XcodecConfig, seed: int) -> Path | None:
    if os.environ.get("XCODEC_STREAM_RANDOM_CACHE", "1") == "0":
        return None
    root = Path(os.environ.get("XCODEC_STREAM_CACHE_DIR") or Path.home() / ".cache" / "xcodec-stream")
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    digest.update(f"{seed} {torch.__version__}".encode())
    return root / f"{name.replace(':', '-')}-{digest.hexdigest()[:16]}.safetensors"


def _write_cache(model: XcodecModel, path: Path) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        logger.info("cannot cache random weights at %s: %s", path, exc)


# ---- transformers-like init ----------------------------------------------------------------------------
@torch.no_grad()
def init_weights(model: XcodecModel, gen: torch.Generator) -> None:
    """Initialise every parameter and buffer like transformers does, from `gen` only (global RNG untouched)."""
    acoustic = {id(m) for part in (model.acoustic_encoder, model.acoustic_decoder) for m in part.modules()}
    semantic_encoder = {id(m) for m in model.encoder_semantic.modules()}
    positional = {id(m.conv) for m in model.modules() if isinstance(m, PositionalConvEmbedding)}
    for module in model.modules():
        if isinstance(module, nn.Conv1d) and id(module) in positional:
            # wav2vec2-style init of the positional conv
            std = 2 * math.sqrt(1 / (module.kernel_size[0] * module.in_channels))
            nn.init.normal_(module.weight, mean=0.0, std=std, generator=gen)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d) and id(module) in acoustic:
            nn.init.trunc_normal_(module.weight, std=0.02, generator=gen)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            nn.init.kaiming_normal_(module.weight, generator=gen)
            if module.bias is not None:
                if id(module) in semantic_encoder:
                    k = math.sqrt(module.groups / (module.in_channels * module.kernel_size[0]))
                    nn.init.uniform_(module.bias, -k, k, generator=gen)
                else:
                    nn.init.zeros_(module.bias)
        elif isinstance(module, nn.ConvTranspose1d):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(module.bias, -bound, bound, generator=gen)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=gen)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=gen)
        elif isinstance(module, Snake1d):
            nn.init.ones_(module.alpha)
        elif isinstance(module, Attention) and hasattr(module, "gru_rel_pos_const"):
            nn.init.ones_(module.gru_rel_pos_const)
    model.quantizer.embed.zero_()


# ---- calibration -----------------------------------------------------------------------------------------
def calibration_signal(
    seconds: float = CALIBRATION_SECONDS, sample_rate: int = 16000, seed: int = SEED
) -> np.ndarray:
    """A deterministic speech-like signal: voiced segments (glottal pulses through moving formants),
    fricatives (shaped noise) and pauses, with syllable-like envelopes. float32, peak 0.5."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out = np.zeros(n, dtype=np.float64)
    t = 0
    ir_len = int(0.025 * sample_rate)
    ir_t = np.arange(ir_len) / sample_rate
    while t < n:
        seg = min(int(rng.uniform(0.06, 0.28) * sample_rate), n - t)
        kind = rng.choice(["voiced", "voiced", "voiced", "fricative", "pause"])
        env = np.hanning(seg) if seg > 2 else np.ones(seg)
        if kind == "voiced":
            f0a, f0b = rng.uniform(85, 260, size=2)
            formants = [rng.uniform(280, 900), rng.uniform(850, 2400), rng.uniform(2200, 3300)]
            bands = rng.uniform(60, 160, size=3)
            gains = [1.0, rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.4)]
            ir = sum(
                g * np.exp(-np.pi * b * ir_t) * np.sin(2 * np.pi * f * ir_t)
                for f, b, g in zip(formants, bands, gains, strict=True)
            )
            sig = np.zeros(seg + ir_len)
            pos = 0.0
            while pos < seg:
                frac = pos / max(seg, 1)
                f0 = f0a + (f0b - f0a) * frac
                i = int(pos)
                sig[i : i + ir_len] += ir * (1.0 + 0.1 * rng.standard_normal())
                pos += sample_rate / f0 * (1.0 + 0.02 * rng.standard_normal())
            sig = sig[:seg] + 0.02 * rng.standard_normal(seg)
            amp = rng.uniform(0.1, 0.4)
        elif kind == "fricative":
            noise = rng.standard_normal(seg + 2)
            sig = noise[2:] - rng.uniform(0.5, 0.98) * noise[1:-1]  # high-pass tilt
            amp = rng.uniform(0.02, 0.08)
        else:
            sig = 1e-3 * rng.standard_normal(seg)
            amp = 1.0
        out[t : t + seg] += amp * env * sig / (np.abs(sig).max() + 1e-12)
        t += seg
    out *= 0.5 / (np.abs(out).max() + 1e-12)
    return out.astype(np.float32)


def _round4(x: float) -> float:
    return float(f"{x:.4g}")


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


@torch.no_grad()
def calibrate(model: XcodecModel, gen: torch.Generator) -> None:
    config = model.config
    x = torch.from_numpy(calibration_signal(sample_rate=config.sample_rate))[None, None]
    # (a) balance the two halves of fc's input
    with torch.inference_mode():
        features = model.semantic_features(F.pad(x[:, 0], (model.pad, model.pad)))
        e_semantic = model.encode_semantic(features)
        e_acoustic = model.encode_acoustic(x, num_frames=e_semantic.shape[2])
    scale = _round4(_rms(e_semantic) / max(_rms(e_acoustic), 1e-30))
    model.acoustic_encoder.conv2.weight.mul_(scale)
    model.acoustic_encoder.conv2.bias.mul_(scale)
    e_acoustic = e_acoustic.clone() * scale
    # (b) codebooks from the residual at each stage
    with torch.inference_mode():
        emb = model.encode_latent(e_acoustic, e_semantic.clone())
    residual = emb[0].t().contiguous().clone()  # (F, D)
    frames, dim = residual.shape
    embed = torch.empty_like(model.quantizer.embed)
    for q in range(config.num_quantizers):
        i = torch.randint(0, frames, (config.codebook_size,), generator=gen)
        j = torch.randint(0, frames, (config.codebook_size,), generator=gen)
        a = torch.empty(config.codebook_size, 1).uniform_(0.6, 1.0, generator=gen)
        noise = torch.randn(config.codebook_size, dim, generator=gen)
        spread = residual.std(dim=0, keepdim=True)
        embed[q] = a * residual[i] + (1 - a) * residual[j] + 0.1 * spread * noise
        model.quantizer.embed[q].copy_(embed[q])
        idx = model.quantizer.nearest(residual, q)
        residual = residual - embed[q][idx]
    # (c) decoded audio at a sane level
    with torch.inference_mode():
        n = min(x.shape[-1], 2 * config.sample_rate)
        codes = model.encode(x[..., :n]).audio_codes
        audio = model.decode(codes).audio_values
    gain = _round4(TARGET_OUTPUT_RMS / max(_rms(audio), 1e-30))
    model.acoustic_decoder.conv2.weight.mul_(gain)
    model.acoustic_decoder.conv2.bias.mul_(gain)
