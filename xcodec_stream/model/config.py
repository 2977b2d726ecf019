"""X-Codec configuration: the same field names and config.json as transformers' `XcodecConfig`."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Keys transformers writes into every config.json that say nothing about the architecture. They are
# accepted and dropped on read; `to_dict` writes `model_type` and `architectures` back so that
# transformers can read what we write.
_HARMLESS_TOP_LEVEL_KEYS = frozenset(
    {
        "transformers_version",
        "architectures",
        "dtype",
        "torch_dtype",
        "_name_or_path",
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "model_type",
    }
)

SEMANTIC_MODEL_TYPES = ("hubert", "wavlm")
ACOUSTIC_MODEL_TYPES = ("dac",)


def _tuple(value: Any, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ValueError(f"config field {name!r} must be a list, got {value!r}")


def _split_known(cls: type, data: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in fields(cls) if f.name != "extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


@dataclass
class AcousticModelConfig:
    """The DAC acoustic encoder/decoder (transformers' `DacConfig` fields that X-Codec uses).

    Other keys of the checkpoint's `acoustic_model_config` (codebook_dim, n_codebooks, ...: DAC's own
    quantizer, unused by X-Codec) are kept in `extra` and written back unchanged.
    """

    encoder_hidden_size: int = 64
    downsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    decoder_hidden_size: int = 1024
    upsampling_ratios: tuple[int, ...] = (8, 5, 4, 2)
    hidden_size: int = 256
    model_type: str = "dac"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in ACOUSTIC_MODEL_TYPES:
            raise ValueError(
                f"unknown acoustic model_type {self.model_type!r}; supported: {', '.join(ACOUSTIC_MODEL_TYPES)}"
            )
        self.downsampling_ratios = _tuple(self.downsampling_ratios, "downsampling_ratios")
        self.upsampling_ratios = _tuple(self.upsampling_ratios, "upsampling_ratios")

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.downsampling_ratios))

    @property
    def encoder_out_channels(self) -> int:
        """Channels before the encoder's last conv: encoder_hidden_size doubled once per block."""
        return self.encoder_hidden_size * 2 ** len(self.downsampling_ratios)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AcousticModelConfig:
        data = dict(data)
        data.setdefault("model_type", "dac")
        known, extra = _split_known(cls, data, "acoustic_model_config")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            # transformers' DacConfig defaults for the fields X-Codec does not use, so that what we write
            # equals what transformers writes for the same model
            "codebook_dim": 8,
            "codebook_loss_weight": 1.0,
            "codebook_size": 1024,
            "commitment_loss_weight": 0.25,
            "n_codebooks": 9,
            "quantizer_dropout": 0.0,
            "sampling_rate": 16000,
        }
        out.update(copy.deepcopy(self.extra))
        out.update(
            encoder_hidden_size=self.encoder_hidden_size,
            downsampling_ratios=list(self.downsampling_ratios),
            decoder_hidden_size=self.decoder_hidden_size,
            upsampling_ratios=list(self.upsampling_ratios),
            hidden_size=self.hidden_size,
            hop_length=self.hop_length,
            model_type=self.model_type,
        )
        return dict(sorted(out.items()))


@dataclass
class SemanticModelConfig:
    """The semantic model: HuBERT (`model_type="hubert"`) or WavLM (`"wavlm"`), transformers' field names.

    Defaults are HuBERT-base / WavLM-base-plus (the two differ only in WavLM's relative position bias:
    `num_buckets`, `max_bucket_distance`). Training-only keys (dropouts, masking, CTC, ...) are kept in
    `extra` and written back unchanged.
    """

    model_type: str = "hubert"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    feat_proj_layer_norm: bool = True
    num_buckets: int = 320
    max_bucket_distance: int = 800
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in SEMANTIC_MODEL_TYPES:
            raise ValueError(
                f"unknown semantic model_type {self.model_type!r}; supported: {', '.join(SEMANTIC_MODEL_TYPES)}"
            )
        self.conv_dim = _tuple(self.conv_dim, "conv_dim")
        self.conv_stride = _tuple(self.conv_stride, "conv_stride")
        self.conv_kernel = _tuple(self.conv_kernel, "conv_kernel")
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            raise ValueError(
                "semantic_model_config: conv_dim, conv_stride and conv_kernel must have the same length, got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)}, {len(self.conv_kernel)}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(
                f"semantic_model_config: feat_extract_norm is {self.feat_extract_norm!r}, must be 'group' or 'layer'"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"semantic_model_config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.conv_pos_batch_norm:
            raise ValueError("semantic_model_config: conv_pos_batch_norm=True is not supported")
        if self.model_type == "wavlm" and not self.feat_proj_layer_norm:
            raise ValueError("semantic_model_config: WavLM always has feat_proj_layer_norm")

    @property
    def is_wavlm(self) -> bool:
        return self.model_type == "wavlm"

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.conv_stride))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticModelConfig:
        data = dict(data)
        data.setdefault("model_type", "hubert")
        if data["model_type"] not in SEMANTIC_MODEL_TYPES:
            raise ValueError(
                f"unknown semantic model_type {data['model_type']!r}; supported: {', '.join(SEMANTIC_MODEL_TYPES)}"
            )
        known, extra = _split_known(cls, data, "semantic_model_config")
        if data["model_type"] == "hubert":
            # HubertConfig has no relative position bias fields
            for name in ("num_buckets", "max_bucket_distance"):
                if name in known:
                    extra[name] = known.pop(name)
        else:
            # WavLMConfig has neither of these: its projection always has a layer norm
            for name in ("feat_proj_layer_norm", "conv_pos_batch_norm"):
                if name in known:
                    extra[name] = known.pop(name)
        extra.pop("num_feat_extract_layers", None)  # derived from conv_dim
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            if self.model_type == "hubert" and f.name in ("num_buckets", "max_bucket_distance"):
                continue
            if self.model_type == "wavlm" and f.name in ("feat_proj_layer_norm", "conv_pos_batch_norm"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["num_feat_extract_layers"] = self.num_feat_extract_layers
        return dict(sorted(out.items()))


@dataclass
class XcodecConfig:
    """X-Codec: DAC acoustic branch + HuBERT/WavLM semantic branch + residual VQ.

    Field names are transformers' (`XcodecConfig`); derived values are properties. `XcodecConfig()` is
    the default (full-size) configuration of the public checkpoints; `XcodecConfig.tiny()` a small one for
    tests and demos.
    """

    target_bandwidths: tuple[float, ...] = (0.5, 1, 1.5, 2, 4)
    sample_rate: int = 16000
    kernel_size: int = 3
    channel_ratios: tuple[float, ...] = (1, 1)
    strides: tuple[int, ...] = (1, 1)
    block_dilations: tuple[int, ...] = (1, 1)
    unit_kernel_size: int = 3
    codebook_size: int = 1024
    codebook_dim: int | None = None
    initializer_range: float = 0.02
    acoustic_model_config: AcousticModelConfig = field(default_factory=AcousticModelConfig)
    semantic_model_config: SemanticModelConfig = field(default_factory=SemanticModelConfig)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.acoustic_model_config, dict):
            self.acoustic_model_config = AcousticModelConfig.from_dict(self.acoustic_model_config)
        if isinstance(self.semantic_model_config, dict):
            self.semantic_model_config = SemanticModelConfig.from_dict(self.semantic_model_config)
        self.target_bandwidths = _tuple(self.target_bandwidths, "target_bandwidths")
        self.channel_ratios = _tuple(self.channel_ratios, "channel_ratios")
        self.strides = _tuple(self.strides, "strides")
        self.block_dilations = _tuple(self.block_dilations, "block_dilations")
        if len(self.strides) != len(self.channel_ratios):
            raise ValueError("Number of strides must match the number of channel_ratios.")
        if any(s != 1 for s in self.strides):
            raise ValueError(
                f"semantic encoder strides other than 1 are not supported, got {list(self.strides)}"
            )
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        if not self.target_bandwidths:
            raise ValueError("target_bandwidths must not be empty")
        if self.acoustic_model_config.hop_length != self.semantic_model_config.hop_length:
            raise ValueError(
                f"acoustic hop ({self.acoustic_model_config.hop_length}) and semantic hop "
                f"({self.semantic_model_config.hop_length}) differ"
            )

    # ---- derived values (transformers' properties) -------------------------------------------------
    @property
    def hop_length(self) -> int:
        return self.acoustic_model_config.hop_length

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def semantic_hidden_size(self) -> int:
        return self.semantic_model_config.hidden_size

    @property
    def acoustic_hidden_size(self) -> int:
        return self.acoustic_model_config.hidden_size

    @property
    def hidden_size(self) -> int:
        return self.acoustic_model_config.hidden_size + self.semantic_model_config.hidden_size

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    @property
    def bandwidth_per_quantizer(self) -> float:
        """kbps per quantizer, as transformers computes it: log2(codebook_size) * frame_rate / 1000."""
        return math.log2(self.codebook_size) * self.frame_rate / 1000

    def bandwidth_to_num_quantizers(self, bandwidth: float | None = None) -> int:
        """Number of quantizers for a target bandwidth in kbps (None: the highest one)."""
        if bandwidth is None:
            bandwidth = self.target_bandwidths[-1]
        elif bandwidth not in self.target_bandwidths:
            allowed = ", ".join(f"{b:g}" for b in self.target_bandwidths)
            raise ValueError(f"unsupported bandwidth {bandwidth!r} kbps; this model supports: {allowed}")
        if bandwidth > 0.0:
            return int(max(1, math.floor(bandwidth / self.bandwidth_per_quantizer)))
        return self.num_quantizers

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, semantic_model_type: str = "hubert") -> XcodecConfig:
        """A small configuration with the real hop (320) and bandwidths: fast random models for tests."""
        if semantic_model_type not in SEMANTIC_MODEL_TYPES:
            raise ValueError(
                f"unknown semantic model_type {semantic_model_type!r}; supported: {', '.join(SEMANTIC_MODEL_TYPES)}"
            )
        return cls(
            acoustic_model_config=AcousticModelConfig(
                encoder_hidden_size=4, decoder_hidden_size=32, hidden_size=16
            ),
            semantic_model_config=SemanticModelConfig(
                model_type=semantic_model_type,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                conv_dim=(32,) * 7,
                num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4,
            ),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XcodecConfig:
        data = dict(data)
        model_type = data.get("model_type", "xcodec")
        if model_type != "xcodec":
            raise ValueError(f"unknown model_type {model_type!r} in config; expected 'xcodec'")
        acoustic = data.pop("acoustic_model_config", None) or {}
        semantic = data.pop("semantic_model_config", None) or {}
        if not isinstance(acoustic, dict) or not isinstance(semantic, dict):
            raise ValueError("acoustic_model_config and semantic_model_config must be JSON objects")
        known, extra = _split_known(cls, data, "config")
        for key in _HARMLESS_TOP_LEVEL_KEYS:
            extra.pop(key, None)
        return cls(
            **known,
            acoustic_model_config=AcousticModelConfig.from_dict(acoustic),
            semantic_model_config=SemanticModelConfig.from_dict(semantic),
            extra=extra,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(self.extra)
        for f in fields(self):
            if f.name in ("extra", "acoustic_model_config", "semantic_model_config"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        out["acoustic_model_config"] = self.acoustic_model_config.to_dict()
        out["semantic_model_config"] = self.semantic_model_config.to_dict()
        out["model_type"] = "xcodec"
        out["architectures"] = ["XcodecModel"]
        return dict(sorted(out.items()))

    @classmethod
    def from_json_file(cls, path: str | Path) -> XcodecConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not a valid JSON config: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON object")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
