"""The semantic model of X-Codec: HuBERT or WavLM, one implementation with the variant differences as flags.

Inference only, module names equal transformers' state-dict keys (`semantic_model.encoder.layers.0...`).
Differences between the variants, all taken from the config:
- WavLM: gated relative position bias (a bucketed bias table in layer 0, re-gated per layer per head);
  its feature projection always has a layer norm.
- HuBERT: optional feature-projection layer norm (`feat_proj_layer_norm`).
- Both: `feat_extract_norm` "group" (GroupNorm in the first conv layer only, which normalises every
  channel over the WHOLE time axis: not streamable exactly) or "layer" (LayerNorm in every conv layer);
  `do_stable_layer_norm` False (post-LN layers, LN after the positional conv) or True (pre-LN, LN at the end).
Training-only parts (masked_spec_embed, dropouts, layer drop, masking) are left out on purpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.config import SemanticModelConfig


def activation(name: str) -> nn.Module:
    """transformers' ACT2FN names that HuBERT/WavLM configs use."""
    table = {
        "gelu": lambda: nn.GELU(),
        "gelu_new": lambda: nn.GELU(approximate="tanh"),
        "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
        "relu": lambda: nn.ReLU(),
        "silu": lambda: nn.SiLU(),
        "swish": lambda: nn.SiLU(),
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(table)}")
    return table[name]()


class ConvLayer(nn.Module):
    """One layer of the waveform feature encoder: conv (no padding), optional norm, activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        bias: bool,
        norm: str | None,
        act: str,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":
            # one group per channel: each channel normalised over the whole time axis
            self.layer_norm = nn.GroupNorm(num_groups=out_channels, num_channels=out_channels, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        self.activation = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class FeatureEncoder(nn.Module):
    """Waveform (B, T) -> conv features (B, C, T // hop), 7 strided convs for the public configs."""

    def __init__(self, config: SemanticModelConfig) -> None:
        super().__init__()
        layers = []
        in_ch = 1
        for i, (dim, k, s) in enumerate(
            zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True)
        ):
            if config.feat_extract_norm == "group":
                norm = "group" if i == 0 else None
            else:
                norm = "layer"
            layers.append(ConvLayer(in_ch, dim, k, s, config.conv_bias, norm, config.feat_extract_activation))
            in_ch = dim
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = waveform[:, None] if waveform.dim() == 2 else waveform
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """(B, T, C) conv features -> (B, T, hidden): optional LayerNorm, Linear."""

    def __init__(self, in_features: int, hidden_size: int, layer_norm: bool, eps: float) -> None:
        super().__init__()
        self.has_layer_norm = layer_norm
        if layer_norm:
            self.layer_norm = nn.LayerNorm(in_features, eps=eps)
        self.projection = nn.Linear(in_features, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_layer_norm:
            x = self.layer_norm(x)
        return self.projection(x)


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time (weight norm folded), trimmed to the input length when the kernel is even, GELU."""

    def __init__(self, hidden_size: int, kernel_size: int, groups: int, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            hidden_size, hidden_size, kernel_size=kernel_size, padding=kernel_size // 2, groups=groups
        )
        self.num_pad_remove = 1 if kernel_size % 2 == 0 else 0
        self.activation = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T, H)."""
        y = self.conv(x.transpose(1, 2))
        if self.num_pad_remove:
            y = y[:, :, : -self.num_pad_remove]
        return self.activation(y).transpose(1, 2)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention; with `gated_relative_bias`, WavLM's gated relative position bias.

    `rel_attn_embed` (the bucketed bias table) exists only where `has_relative_position_bias` (WavLM's
    layer 0); the other layers re-gate the bias that layer 0 computed.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        gated_relative_bias: bool = False,
        has_relative_position_bias: bool = False,
        num_buckets: int = 320,
        max_distance: int = 800,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.gated_relative_bias = gated_relative_bias
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        if gated_relative_bias:
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))
            self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
        if has_relative_position_bias:
            self.rel_attn_embed = nn.Embedding(num_buckets, num_heads)

    # ---- WavLM relative position bias --------------------------------------------------------------
    def relative_position_bucket(self, relative_positions: torch.Tensor) -> torch.Tensor:
        """T5-style buckets, as WavLM computes them (the same float ops, so the same buckets)."""
        num_buckets = self.num_buckets // 2
        buckets = (relative_positions > 0).to(torch.long) * num_buckets
        relative_positions = torch.abs(relative_positions)
        max_exact = num_buckets // 2
        is_small = relative_positions < max_exact
        if_large = torch.log(relative_positions.float() / max_exact)
        if_large = if_large / math.log(self.max_distance / max_exact)
        if_large = if_large * (num_buckets - max_exact)
        if_large = (max_exact + if_large).to(torch.long)
        if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
        return buckets + torch.where(is_small, relative_positions, if_large)

    def compute_bias(self, query_length: int, key_length: int, query_offset: int = 0) -> torch.Tensor:
        """(H, Tq, Tk) bias; query i sits at position `query_offset + i`, key j at `j`."""
        device = self.rel_attn_embed.weight.device
        context = torch.arange(query_length, dtype=torch.long, device=device)[:, None] + query_offset
        memory = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        values = self.rel_attn_embed(self.relative_position_bucket(memory - context))
        return values.permute(2, 0, 1)

    def gate(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """Per-head, per-query gate on the shared bias: (B, T, H*d), (H, T, S) -> (B, H, T, S)."""
        b, t, _ = x.shape
        gated = x.view(b, t, self.num_heads, -1).permute(0, 2, 1, 3)
        proj = self.gru_rel_pos_linear(gated).view(*gated.shape[:-1], 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
        gate_output = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
        return gate_output * position_bias.unsqueeze(0)

    def forward(
        self,
        x: torch.Tensor,
        position_bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        new_kv: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, T, H*d) -> (B, T, H*d). `position_bias` (H, T, S): WavLM's shared, ungated bias.
        `key_mask` (B, S) bool: keys that exist (the streaming engine's windows mask frames outside the signal).

        Streaming key/value cache: `past` = (keys, values) (B, P, H*d) of earlier frames, put before this
        call's own (S = P + T); `new_kv` collects this call's (keys, values) stacked as (B, 2, T, H*d)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.k_proj(x), self.v_proj(x)
        if new_kv is not None:
            new_kv.append(torch.stack([k, v], dim=1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        s = k.shape[1]
        k = k.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        mask = None
        if self.gated_relative_bias:
            if position_bias is None:
                raise ValueError("WavLM attention needs the relative position bias")
            mask = self.gate(x, position_bias).to(q.dtype)
        if key_mask is not None:
            neg = torch.zeros(b, 1, 1, s, dtype=q.dtype, device=q.device).masked_fill(
                ~key_mask[:, None, None, :], float("-inf")
            )
            mask = neg if mask is None else mask + neg
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return self.out_proj(out)


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden_size, intermediate_size)
        self.intermediate_act_fn = activation(act)
        self.output_dense = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.intermediate_act_fn(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Transformer layer; post-LN (HuBERT/WavLM base) or pre-LN (`stable_layer_norm`)."""

    def __init__(self, config: SemanticModelConfig, has_relative_position_bias: bool) -> None:
        super().__init__()
        self.stable_layer_norm = config.do_stable_layer_norm
        self.attention = Attention(
            config.hidden_size,
            config.num_attention_heads,
            gated_relative_bias=config.is_wavlm,
            has_relative_position_bias=has_relative_position_bias,
            num_buckets=config.num_buckets,
            max_distance=config.max_bucket_distance,
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        position_bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        new_kv: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`past` / `new_kv`: the streaming key/value cache (see `Attention.forward`); None offline."""
        if self.stable_layer_norm:
            x = x + self.attention(self.layer_norm(x), position_bias, key_mask, past, new_kv)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, position_bias, key_mask, past, new_kv))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nn.Module):
    """Positional conv embedding, layer norm (post-LN variant: before the layers; stable: after), layers."""

    def __init__(self, config: SemanticModelConfig) -> None:
        super().__init__()
        self.is_wavlm = config.is_wavlm
        self.stable_layer_norm = config.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(
            config.hidden_size,
            config.num_conv_pos_embeddings,
            config.num_conv_pos_embedding_groups,
            config.feat_extract_activation,
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            [
                EncoderLayer(config, has_relative_position_bias=config.is_wavlm and i == 0)
                for i in range(config.num_hidden_layers)
            ]
        )

    def position_bias(self, length: int) -> torch.Tensor | None:
        """WavLM's ungated relative bias (H, T, T) for a sequence of `length` frames; None for HuBERT."""
        if not self.is_wavlm:
            return None
        return self.layers[0].attention.compute_bias(length, length)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add the positional conv embedding (and the post-LN variant's layer norm): the input of layer 0."""
        x = x + self.pos_conv_embed(x)
        if not self.stable_layer_norm:
            x = self.layer_norm(x)
        return x

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(B, T, H) projected features -> all hidden states: the input of layer 0, then each layer's output.

        `key_mask` (B, T) bool (streaming windows): frames that exist. The others are zeroed before the
        positional conv and never attended to, which equals running on the existing frames alone.

        That is transformers' `hidden_states` (num_hidden_layers + 1 tensors). For the stable-LN variant the
        final layer norm is not part of them (it only makes `last_hidden_state`), so it is not applied here.
        """
        if key_mask is not None:
            x = x * key_mask[..., None].to(x.dtype)
        x = self.embed(x)
        bias = self.position_bias(x.shape[1])
        hidden = [x]
        for layer in self.layers:
            x = layer(x, bias, key_mask)
            hidden.append(x)
        return hidden


class SemanticModel(nn.Module):
    """HuBERT / WavLM without the training parts: `feature_extractor`, `feature_projection`, `encoder`."""

    def __init__(self, config: SemanticModelConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(
            config.conv_dim[-1], config.hidden_size, config.feat_proj_layer_norm, config.layer_norm_eps
        )
        self.encoder = Encoder(config)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def hidden_states(self, waveform: torch.Tensor) -> list[torch.Tensor]:
        """(B, T) waveform -> the num_hidden_layers + 1 hidden states, each (B, T // hop, H)."""
        features = self.feature_extractor(waveform).transpose(1, 2)
        return self.encoder(self.feature_projection(features))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, T) -> mean of all hidden states (B, T // hop, H): what X-Codec feeds its semantic encoder."""
        return torch.stack(self.hidden_states(waveform), dim=1).mean(dim=1)
