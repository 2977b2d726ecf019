"""Checkpoint loading and saving: transformers' X-Codec format (config.json + safetensors), strict, no pickle.

Accepted weight forms: plain `weight`, old weight norm (`weight_g`/`weight_v`) and parametrized weight norm
(`parametrizations.weight.original0/1`), folded into plain weights at load. Keys that are present in
checkpoints but unused at inference are skipped without being read (IGNORED_KEYS); any other key the
model does not have, any key it lacks, or a wrong shape is an error that names the keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.layers import fold_weight_norm

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MODEL_ID = "hf-audio/xcodec-hubert-librispeech"

# Checkpoint keys skipped on purpose (never read into memory):
IGNORED_KEYS = [
    r"fc1\..*",  # semantic reconstruction head, training only
    r"decoder_semantic\..*",  # semantic decoder, training only
    r"quantizer\.quantizers\.\d+\.codebook\.(inited|cluster_size|embed_avg)",  # EMA codebook training buffers
    r"semantic_model\.masked_spec_embed",  # HuBERT/WavLM SpecAugment mask vector, training only
]
_IGNORED = re.compile("|".join(f"(?:{p})" for p in IGNORED_KEYS))

# Weight norm is along dim 0 everywhere except HuBERT/WavLM's positional conv (dim 2).
_WEIGHT_NORM_DIM = {"semantic_model.encoder.pos_conv_embed.conv": 2}
_CODEBOOK = re.compile(r"quantizer\.quantizers\.(\d+)\.codebook\.embed")
_WN_SUFFIXES = {
    ".weight_g": "g",
    ".weight_v": "v",
    ".parametrizations.weight.original0": "g",
    ".parametrizations.weight.original1": "v",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_LISTED = 12


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the keys or the file at fault."""


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
    }
    key = str(dtype).removeprefix("torch.")
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
    return names[key]


# ---- locating a checkpoint ---------------------------------------------------------------------------
def resolve_checkpoint_dir(id_or_dir: str | os.PathLike) -> Path:
    """A local directory, or a hub id fetched through huggingface_hub (cache and HF_HUB_OFFLINE respected)."""
    name = os.fspath(id_or_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(
            f"{path} is a file; pass the checkpoint directory (config.json + model.safetensors)"
        )
    looks_local = isinstance(id_or_dir, Path) or name.startswith((".", "/", "~")) or not _HUB_ID.match(name)
    if looks_local:
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    return _snapshot(name)


def _snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=[
                    CONFIG_NAME,
                    WEIGHTS_NAME,
                    WEIGHTS_INDEX_NAME,
                    "model-*.safetensors",
                    "preprocessor_config.json",
                ],
            )
        )
    except Exception as exc:  # offline, unknown repo, network: one clear line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(
            f"cannot load model {repo_id!r}: it is not a local directory and the Hugging Face hub could not "
            f"provide it ({type(exc).__name__}: {reason}); pass a local checkpoint directory, or "
            f"'random:full' for random weights"
        ) from None


def _weight_files(directory: Path) -> list[Path]:
    single = directory / WEIGHTS_NAME
    index = directory / WEIGHTS_INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
        files = []
        for name in sorted(set(weight_map.values())):
            f = directory / name
            if not f.is_file():
                raise FileNotFoundError(f"{f} (listed in {index}) is missing")
            files.append(f)
        return files
    pickles = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
    hint = f"; found {', '.join(sorted(pickles))}, but pickle files are never loaded" if pickles else ""
    raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}{hint}")


# ---- reading and converting weights -------------------------------------------------------------------
def read_checkpoint(files: list[Path], config: XcodecConfig) -> dict[str, torch.Tensor]:
    """The checkpoint in our key space: weight norm folded, codebooks stacked, ignored keys never read."""
    plain: dict[str, torch.Tensor] = {}
    wn: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}  # base -> {"g"|"v": (checkpoint key, tensor)}
    codebooks: dict[int, torch.Tensor] = {}
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{file} is not a valid safetensors file: {exc}") from None
        with handle:
            for key in handle.keys():
                if _IGNORED.fullmatch(key):
                    continue
                try:
                    tensor = handle.get_tensor(key)
                except (SafetensorError, OSError, ValueError) as exc:
                    raise CheckpointError(f"{file}: cannot read tensor {key!r}: {exc}") from None
                m = _CODEBOOK.fullmatch(key)
                if m:
                    codebooks[int(m.group(1))] = tensor
                    continue
                for suffix, part in _WN_SUFFIXES.items():
                    if key.endswith(suffix):
                        wn.setdefault(key[: -len(suffix)], {})[part] = (key, tensor)
                        break
                else:
                    plain[key] = tensor
    for base, parts in wn.items():
        if "g" not in parts or "v" not in parts:
            have = next(iter(parts.values()))[0]
            raise CheckpointError(
                f"weight-norm key {have!r} has no partner (needs both the g and the v tensor)"
            )
        if base + ".weight" in plain:
            raise CheckpointError(f"{base}: checkpoint has both a plain weight and a weight-norm pair")
        try:
            plain[base + ".weight"] = fold_weight_norm(
                parts["g"][1], parts["v"][1], _WEIGHT_NORM_DIM.get(base, 0)
            )
        except ValueError as exc:
            raise CheckpointError(f"{base}: {exc}") from None
    if codebooks:
        n_q = config.num_quantizers
        extra = sorted(i for i in codebooks if i >= n_q)
        if extra:
            raise CheckpointError(
                "unexpected keys in checkpoint: "
                + _listing(f"quantizer.quantizers.{i}.codebook.embed" for i in extra)
                + f" (the config has {n_q} quantizers)"
            )
        missing = [i for i in range(n_q) if i not in codebooks]
        if missing:
            raise CheckpointError(
                "missing keys in checkpoint: "
                + _listing(f"quantizer.quantizers.{i}.codebook.embed" for i in missing)
            )
        expected = (config.codebook_size, config.codebook_dim)
        for i, t in sorted(codebooks.items()):
            if tuple(t.shape) != expected:
                raise CheckpointError(
                    f"wrong shape for quantizer.quantizers.{i}.codebook.embed: checkpoint {tuple(t.shape)}, "
                    f"model {expected}"
                )
        plain["quantizer.embed"] = torch.stack([codebooks[i] for i in range(n_q)])
    return plain


def check_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Strict comparison of keys and shapes, errors name the keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def ckpt_name(key: str) -> str:
        return "quantizer.quantizers.*.codebook.embed" if key == "quantizer.embed" else key

    missing = set(expected) - set(state)
    if missing:
        raise CheckpointError("missing keys in checkpoint: " + _listing(ckpt_name(k) for k in missing))
    unexpected = set(state) - set(expected)
    if unexpected:
        raise CheckpointError("unexpected keys in checkpoint: " + _listing(unexpected))
    wrong = [
        f"{ckpt_name(k)}: checkpoint {tuple(state[k].shape)}, model {expected[k]}"
        for k in sorted(expected)
        if tuple(state[k].shape) != expected[k]
    ]
    if wrong:
        raise CheckpointError("wrong shapes in checkpoint: " + "; ".join(wrong[:_MAX_LISTED]))


def load_model_from_dir(
    directory: Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None
):
    """Build the model from a checkpoint directory without ever holding random weights or unused tensors."""
    from xcodec_stream.model.xcodec import XcodecModel

    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    config = XcodecConfig.from_json_file(config_file)
    files = _weight_files(directory)
    state = read_checkpoint(files, config)
    with torch.device("meta"):
        model = XcodecModel(config)
    check_state_dict(state, model)
    target = dtype or torch.float32
    state = {k: (v.to(target) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def from_pretrained(
    id_or_dir: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
):
    """Hub id, local directory, or `random:tiny` / `random:full` (and `-wavlm` variants)."""
    dtype = parse_dtype(dtype)
    name = os.fspath(id_or_dir)
    if isinstance(id_or_dir, str) and name.startswith("random:"):
        from xcodec_stream.model.random_init import random_model

        model = random_model(name)
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        return model
    directory = resolve_checkpoint_dir(id_or_dir)
    model = load_model_from_dir(directory, dtype=dtype, device=device)
    model.name_or_path = name
    return model


# ---- saving --------------------------------------------------------------------------------------------
def to_transformers_state_dict(model) -> dict[str, torch.Tensor]:
    """Our weights under transformers' keys (pos conv as a weight-norm pair along dim 2, codebooks split)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if key == "quantizer.embed":
            for i in range(value.shape[0]):
                embed = value[i].clone().contiguous()
                prefix = f"quantizer.quantizers.{i}.codebook."
                out[prefix + "embed"] = embed
                out[prefix + "embed_avg"] = embed.clone()
                out[prefix + "cluster_size"] = torch.zeros(embed.shape[0], dtype=embed.dtype)
                out[prefix + "inited"] = torch.ones(1, dtype=embed.dtype)
            continue
        base = key.removesuffix(".weight")
        if key.endswith(".weight") and base in _WEIGHT_NORM_DIM:
            dim = _WEIGHT_NORM_DIM[base]
            dims = [d for d in range(value.dim()) if d != dim]
            g = torch.linalg.vector_norm(value, dim=dims, keepdim=True)
            out[base + ".parametrizations.weight.original0"] = g.contiguous()
            out[base + ".parametrizations.weight.original1"] = value
            continue
        out[key] = value
    return out


def save_pretrained(model, directory: str | os.PathLike) -> Path:
    from xcodec_stream.model.feature_extraction import XcodecFeatureExtractor

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(directory / CONFIG_NAME)
    save_file(to_transformers_state_dict(model), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    XcodecFeatureExtractor(
        sampling_rate=model.config.sample_rate, hop_length=model.config.hop_length
    ).save_pretrained(directory)
    return directory
