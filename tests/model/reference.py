"""Reference checkpoints written by transformers (the test oracle) in the three weight forms."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xcodec_stream import XcodecConfig

FORMS = ("plain", "parametrizations", "weight_g_v")


def tiny_config(semantic: str = "hubert", **semantic_overrides) -> XcodecConfig:
    cfg = XcodecConfig.tiny(semantic)
    if semantic_overrides:
        d = cfg.to_dict()
        d["semantic_model_config"].update(semantic_overrides)
        cfg = XcodecConfig.from_dict(d)
    return cfg


def reference_signals(batch: int = 2, length: int = 16000 + 123, seed: int = 0) -> torch.Tensor:
    """A batch of different signals (B, 1, length): a chirp plus noise, and noise bursts with a silent tail."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    rows = []
    for b in range(batch):
        if b % 2 == 0:
            x = 0.3 * torch.sin(2 * math.pi * (100 + 900 * t) * t) + 0.02 * torch.randn(length, generator=g)
        else:
            x = 0.2 * torch.randn(length, generator=g) * (torch.sin(2 * math.pi * 3 * t) > 0)
            x[length // 3 :] = 0.0  # zero tail, as padding leaves it
        rows.append(x)
    return torch.stack(rows)[:, None, :].float()


@torch.no_grad()
def make_transformers_model(config: XcodecConfig, seed: int = 0):
    """transformers.XcodecModel with random weights that exercise every parameter:

    all parameters perturbed (biases, Snake alphas, norms are not left at their trivial init), the zero
    codebooks filled with seeded random vectors at the latent's scale, and the acoustic branch scaled so
    that it matters next to the semantic one.
    """
    import transformers

    torch.manual_seed(seed)
    tm = transformers.XcodecModel(transformers.XcodecConfig.from_dict(config.to_dict())).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in tm.named_parameters():
        scale = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 1.0
        p.add_(0.05 * scale * torch.randn(p.shape, generator=g))
        if name.endswith("alpha"):
            p.abs_().clamp_(min=0.2)
    x = reference_signals(1, 16000, seed=seed + 2)
    features = tm._extract_semantic_features(x)
    e_sem = tm.encoder_semantic(features.transpose(1, 2))
    e_ac = tm.acoustic_encoder(x)
    ratio = float(e_sem.pow(2).mean().sqrt() / e_ac.pow(2).mean().sqrt())
    tm.acoustic_encoder.conv2.weight.mul_(ratio)
    tm.acoustic_encoder.conv2.bias.mul_(ratio)
    emb = tm.fc(torch.cat([e_ac * ratio, e_sem], 1).transpose(1, 2))
    std = float(emb.std())
    for i, q in enumerate(tm.quantizer.quantizers):
        q.codebook.embed.copy_(torch.randn(q.codebook.embed.shape, generator=g) * std / (1.5**i))
    return tm


def save_reference(tm, directory: Path, form: str = "plain") -> Path:
    """save_pretrained in one of FORMS: plain acoustic weights, parametrized weight norm, or weight_g/weight_v."""
    if form not in FORMS:
        raise ValueError(form)
    if form != "plain":
        tm.apply_weight_norm()
    tm.save_pretrained(directory)
    if form != "plain":
        tm.remove_weight_norm()
    if form == "weight_g_v":
        path = directory / "model.safetensors"
        state = load_file(str(path))
        renamed = {
            k.replace(".parametrizations.weight.original0", ".weight_g").replace(
                ".parametrizations.weight.original1", ".weight_v"
            ): v
            for k, v in state.items()
        }
        assert any(k.endswith(".weight_g") for k in renamed)
        save_file(renamed, str(path), metadata={"format": "pt"})
    return directory
