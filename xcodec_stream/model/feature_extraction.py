"""Feature extractor with transformers' DacFeatureExtractor behaviour: mono 16 kHz, right-pad to the hop."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG = "preprocessor_config.json"


class BatchFeature(dict):
    """A dict whose keys are also attributes (`out.input_values`), like transformers' BatchFeature."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args: Any, **kwargs: Any) -> BatchFeature:
        """Move every tensor value (`.to(device)` / `.to(dtype)` applies to the float ones only for a dtype)."""
        out = BatchFeature()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                is_dtype = bool(args) and isinstance(args[0], torch.dtype) or "dtype" in kwargs
                out[key] = value.to(*args, **kwargs) if (value.is_floating_point() or not is_dtype) else value
            else:
                out[key] = value
        return out


class XcodecFeatureExtractor:
    """Turns raw waveforms into the model's `input_values` (B, 1, T) and `padding_mask` (B, T).

    No normalisation: samples pass through as float32. With padding (the default) every example is
    right-padded with `padding_value` to the longest one, rounded up to a multiple of `hop_length`.
    """

    model_input_names = ("input_values", "padding_mask")

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        hop_length: int = 320,
        **kwargs: Any,
    ) -> None:
        if feature_size != 1:
            raise ValueError(
                f"only mono audio is supported (feature_size=1), got feature_size={feature_size}"
            )
        self.feature_size = feature_size
        self.sampling_rate = int(sampling_rate)
        self.padding_value = float(padding_value)
        self.hop_length = int(hop_length)
        self.padding_side = kwargs.pop("padding_side", "right")
        if self.padding_side != "right":
            raise ValueError(f"only padding_side='right' is supported, got {self.padding_side!r}")
        self.return_attention_mask = kwargs.pop("return_attention_mask", True)
        kwargs.pop("feature_extractor_type", None)
        kwargs.pop("processor_class", None)
        self.extra = kwargs

    def __repr__(self) -> str:
        return (
            f"XcodecFeatureExtractor(feature_size={self.feature_size}, sampling_rate={self.sampling_rate}, "
            f"padding_value={self.padding_value}, hop_length={self.hop_length})"
        )

    # ---- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, id_or_dir: str | os.PathLike, **kwargs: Any) -> XcodecFeatureExtractor:
        """Read `preprocessor_config.json` from a local directory or a hub id; defaults when it has none.

        `random:*` ids (random-weight models) get the defaults.
        """
        name = str(id_or_dir)
        if name.startswith("random:"):
            return cls(**kwargs)
        path = Path(name)
        config_file: Path | None = None
        if path.is_dir():
            candidate = path / PREPROCESSOR_CONFIG
            config_file = candidate if candidate.is_file() else None
        elif path.exists():
            raise ValueError(f"{path} is not a directory")
        else:
            config_file = _hub_file(name, PREPROCESSOR_CONFIG)
        data: dict[str, Any] = {}
        if config_file is not None:
            try:
                data = json.loads(config_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError(f"{config_file} is not a JSON object")
        data.update(kwargs)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_extractor_type": "DacFeatureExtractor",
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "padding_side": self.padding_side,
            "padding_value": self.padding_value,
            "return_attention_mask": self.return_attention_mask,
            "sampling_rate": self.sampling_rate,
            **self.extra,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        out = directory / PREPROCESSOR_CONFIG
        out.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return out

    # ---- featurizing --------------------------------------------------------------------------------
    def __call__(
        self,
        raw_audio: Any,
        padding: bool | str | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        sampling_rate: int | None = None,
    ) -> BatchFeature:
        """Featurize one waveform (1-D) or a batch (list of 1-D waveforms).

        `padding`: True / "longest" (default): pad to the longest, rounded up to the hop; "max_length":
        pad to `max_length` (rounded up to the hop); False / "do_not_pad": no padding (lengths must then
        agree to make a tensor). `return_tensors`: "pt", "np" or None (lists of numpy arrays).
        """
        if sampling_rate is not None:
            if int(sampling_rate) != self.sampling_rate:
                raise ValueError(
                    f"audio sampled at {sampling_rate} Hz, but this model needs {self.sampling_rate} Hz: "
                    f"resample it first (e.g. torchaudio.functional.resample)"
                )
        else:
            logger.warning(
                "pass sampling_rate= to XcodecFeatureExtractor() so that a wrong sampling rate is caught"
            )
        if padding and truncation:
            raise ValueError("Both padding and truncation were set. Make sure you only set one.")
        if padding is None:
            padding = True
        strategy = _padding_strategy(padding, max_length)
        if truncation and max_length is None:
            raise ValueError("truncation=True needs max_length")

        examples = _as_examples(raw_audio)
        if truncation:
            examples = [x[:max_length] for x in examples]

        lengths = [len(x) for x in examples]
        if strategy == "longest":
            target = max(lengths)
        elif strategy == "max_length":
            target = max(max_length or 0, 0)
        else:
            target = None
        if target is not None and self.hop_length > 0 and target % self.hop_length:
            target = (target // self.hop_length + 1) * self.hop_length

        values: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        for x in examples:
            if target is not None and len(x) < target:
                pad = np.full(target - len(x), self.padding_value, dtype=np.float32)
                mask = np.concatenate(
                    [np.ones(len(x), dtype=np.int32), np.zeros(target - len(x), dtype=np.int32)]
                )
                x = np.concatenate([x, pad])
            else:
                mask = np.ones(len(x), dtype=np.int32)
            values.append(x[None, :])
            masks.append(mask)

        out = BatchFeature()
        if return_tensors is None:
            out["input_values"] = values
            if strategy != "do_not_pad":
                out["padding_mask"] = masks
            return out
        if len({v.shape[-1] for v in values}) != 1:
            raise ValueError(
                "examples have different lengths and padding is off: pass padding=True to make one tensor"
            )
        stacked = np.stack(values)
        stacked_mask = np.stack(masks)
        if return_tensors == "np":
            out["input_values"] = stacked
            if strategy != "do_not_pad":
                out["padding_mask"] = stacked_mask
        elif return_tensors == "pt":
            out["input_values"] = torch.from_numpy(stacked)
            if strategy != "do_not_pad":
                out["padding_mask"] = torch.from_numpy(stacked_mask).long()
        else:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        return out


def _padding_strategy(padding: bool | str, max_length: int | None) -> str:
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding == "do_not_pad":
        return "do_not_pad"
    if padding == "max_length":
        if max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        return "max_length"
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _as_examples(raw_audio: Any) -> list[np.ndarray]:
    """A list of 1-D float32 waveforms; a clear error for stereo or a wrong shape."""
    if isinstance(raw_audio, (list, tuple)):
        if len(raw_audio) == 0:
            raise ValueError("raw_audio is empty")
        batched = isinstance(raw_audio[0], (np.ndarray, torch.Tensor, list, tuple))
        items = list(raw_audio) if batched else [raw_audio]
    else:
        items = [raw_audio]
    examples = []
    for i, item in enumerate(items):
        x = _to_numpy(item)
        if x.ndim == 2 and 1 in x.shape:
            raise ValueError(f"example {i} has shape {x.shape}: pass mono audio as a 1-D array of samples")
        if x.ndim == 2:
            raise ValueError(
                f"example {i} has shape {x.shape}: expected mono audio (a 1-D array), got "
                f"{min(x.shape)} channels; downmix it first (e.g. audio.mean(axis=channel_axis))"
            )
        if x.ndim != 1:
            raise ValueError(f"example {i} has shape {x.shape}: expected a 1-D array of samples")
        if x.shape[0] == 0:
            raise ValueError(f"example {i} is empty")
        examples.append(x)
    return examples


def _hub_file(repo_id: str, filename: str) -> Path | None:
    """A file of a hub repository through huggingface_hub (cache, HF_HUB_OFFLINE); None if it cannot be had.

    Missing preprocessor settings are not fatal: the defaults are those of every public X-Codec checkpoint.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError:
        logger.warning(
            "%s of %r is not in the local cache and the hub cannot be reached: using defaults",
            filename,
            repo_id,
        )
        return None
    except EntryNotFoundError:
        return None
