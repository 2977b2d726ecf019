"""Streaming semantic branch: cached HuBERT/WavLM conv features, a windowed transformer, the semantic encoder.

The semantic model cannot be streamed exactly (GroupNorm over the whole time axis in its first conv
layer, a 128-frame positional conv, bidirectional attention). What is done instead, per session:

- Conv features (7 strided convs, 60-70 % of the FLOPs that are not attention) are computed once per
  frame, streaming, and cached. The first layer's GroupNorm normalises every channel with the statistics
  of the stream *so far* (every output up to and including the one being normalised, the offline
  padding included): a causal stand-in for the whole-signal statistics of offline, independent of how
  the stream is chunked, O(1) memory. It converges to the offline statistics as a stream goes on; the
  first frames (and a stream that starts with a long silence) differ most.
- Every `block` frames, the transformer runs over a fixed window of cached features:
  `left` context frames + the block + `lookahead` frames, masked where the window reaches before the
  signal's start or after its end (so the window equals offline's trimmed one there). The cost per call
  is bounded by the window; nothing is re-run over the history.
- With `semantic_cache`, only the block + lookahead frames go through the transformer: each layer's
  attention takes the left context's keys/values from a per-row cache that earlier blocks committed (their
  block frames, Emformer-style). The positional conv still reads the window's features. Cost per block:
  (block + lookahead) queries over (left + block + lookahead) keys; the blocks of one row run in order.
- The semantic encoder (k3 convs, receptive field 7 frames each side) is streamed with the generic
  streaming convs: its state holds the final features of earlier blocks, and the window's lookahead
  frames feed its lookahead speculatively (computed, not committed). Where the window stops short of its
  7 frames, the signal is taken to end at the window's end (zeros, as offline at a real end).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.semantic import FeatureEncoder
from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import Chain, Conv, Pointwise, StreamNode, valid_mask


class _ChannelNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T) signal (the "layer" variant of the conv feature encoder)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class PrefixGroupNorm(StreamNode):
    """GroupNorm with one group per channel, normalising with the statistics of the stream so far.

    State per row: running sum, sum of squares and count of the valid inputs (float64). Input j of a call
    is normalised with the statistics of every valid input up to and including j, so the result does not
    depend on chunking.
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        if norm.num_groups != norm.num_channels:
            raise ValueError("streaming GroupNorm supports one group per channel only")
        self.norm = norm
        self.channels = norm.num_channels
        self.state_index = -1

    def bind(self, in_offset, in_rate, states):
        self.in_offset = self.out_offset = in_offset
        self.in_rate = self.out_rate = in_rate
        self.state_index = len(states)
        states.append(torch.zeros(self.channels + 1, 2, dtype=torch.float64))  # rows: channels + count
        return in_offset, in_rate

    def step(self, x, end, ctx):
        b, c, n = x.shape
        state = ctx.states[self.state_index]  # (b, C + 1, 2): [:, :C] = (sum, sumsq), [:, C, 0] = count
        xd = x.double()
        if ctx.masking:
            valid = valid_mask(ctx, self.out_offset, self.out_rate, n, end, x.device).double()
            xd = xd * valid
        else:
            valid = xd.new_ones(b, 1, n)
        sums = torch.cumsum(torch.cat([xd, xd * xd], dim=1), dim=-1)  # (b, 2C, n)
        counts = torch.cumsum(valid, dim=-1)  # (b, 1, n)
        total_sum = state[:, :c, 0:1] + sums[:, :c]
        total_sq = state[:, :c, 1:2] + sums[:, c:]
        total_n = (state[:, c:, 0:1] + counts).clamp(min=1.0)
        mean = total_sum / total_n
        var = (total_sq / total_n - mean * mean).clamp(min=0.0)
        rstd = torch.rsqrt(var + self.norm.eps)
        y = (x - mean.to(x.dtype)) * rstd.to(x.dtype)
        y = y * self.norm.weight[:, None] + self.norm.bias[:, None]
        # new state: the totals where each row's committed input ends (index adv*rate - 1; 0 frames: old state)
        full = torch.cat(
            [
                torch.cat([state[:, :c, 0:1], total_sum], dim=-1),
                torch.cat([state[:, :c, 1:2], total_sq], dim=-1),
            ],
            dim=1,
        )  # (b, 2C, n + 1)
        cnt = torch.cat([state[:, c:, 0:1], state[:, c:, 0:1] + counts], dim=-1)  # (b, 1, n + 1)
        at = np.full(b, n) if ctx.adv is None else ctx.adv * self.in_rate
        pick = torch.from_numpy(at).to(x.device)[:, None, None]
        new_sum = full.gather(-1, pick.expand(b, 2 * c, 1))  # (b, 2C, 1)
        new_cnt = cnt.gather(-1, pick)  # (b, 1, 1)
        new = torch.cat([torch.cat([new_sum[:, :c], new_sum[:, c:]], dim=-1), new_cnt.expand(b, 1, 2)], dim=1)
        ctx.new_states[self.state_index] = new
        if ctx.masking:
            y = y * valid.to(y.dtype)
        return y, end


def feature_graph(fe: FeatureEncoder, pad: int, hop: int) -> StreamGraph:
    """The conv feature encoder as a streaming graph over the raw waveform (padded by `pad` as offline).

    The layers start with a head start: their first outputs (computed from padding alone) are not emitted
    but put into the next layers' initial buffers, so that feature frame j is out once frame j's samples are
    in (it reads samples up to j*hop + hop - 1 - (hop/2 - 80) at most).
    """
    nodes: list[StreamNode] = []
    for i, layer in enumerate(fe.conv_layers):
        nodes.append(Conv(layer.conv, padding=pad if i == 0 else 0, head=True))
        if layer.norm == "group":
            nodes.append(PrefixGroupNorm(layer.layer_norm))
        elif layer.norm == "layer":
            nodes.append(Pointwise(_ChannelNorm(layer.layer_norm), zero_preserving=False))
        nodes.append(Pointwise(layer.activation))
    graph = StreamGraph(Chain(nodes), in_rate=hop)
    _fill_head(graph)
    return graph


@torch.no_grad()
def _fill_head(graph: StreamGraph) -> None:
    """Initial buffers = the values the offline layers compute from padding alone (constants)."""
    value = torch.zeros(1)  # the waveform's zero padding
    for node in graph.chain.children:
        if isinstance(node, Conv):
            if node.buffer:
                times = node.in_offset - node.buffer + torch.arange(node.buffer)
                # times before 0 are padding of this layer's own input (zeros), later ones the head value
                graph.templates[node.state_index] = value[:, None] * (times >= 0).to(value.dtype)[None, :]
            w = node.module.weight.float()
            x = value[None, :, None].expand(1, w.shape[1] * node.groups, node.span).contiguous()
            bias = None if node.module.bias is None else node.module.bias.float()
            value = F.conv1d(x, w, bias, dilation=node.dilation, groups=node.groups)[0, :, 0]
        elif isinstance(node, PrefixGroupNorm):
            head = max(0, node.in_offset)  # outputs before the first emitted one, all equal to `value`
            tpl = torch.zeros(node.channels + 1, 2, dtype=torch.float64)
            tpl[: node.channels, 0] = head * value.double()
            tpl[: node.channels, 1] = head * value.double() ** 2
            tpl[node.channels, :] = head
            graph.templates[node.state_index] = tpl
            value = node.norm.bias.detach().float().clone()  # a constant channel normalises to 0 -> bias
        elif isinstance(node, Pointwise):
            value = node.module(value[None, :, None].to(next(node.module.parameters(), value).dtype))[
                0, :, 0
            ].float()


class SemanticStream:
    """The semantic branch of one streaming encoder: graphs and window geometry; state lives in the caller's bank.

    States (per row), in this order: conv-feature graph states, the feature ring (C_feat, ring) holding the
    last `ring` feature frames, semantic-encoder graph states, with `cache` the key/value cache.
    """

    def __init__(
        self, model: nn.Module, block: int, left: int, lookahead: int, max_frames: int, cache: bool = False
    ) -> None:
        if block < 1 or left < 0 or lookahead < 0:
            raise ValueError(
                f"semantic block must be >= 1 and context/lookahead >= 0, got {block}, {left}, {lookahead}"
            )
        self.model = model
        sm = model.semantic_model
        self.block, self.left, self.lookahead = block, left, lookahead
        self.window = left + block + lookahead
        self.features = feature_graph(sm.feature_extractor, model.pad, model.hop_length)
        if self.features.delay != 0:
            raise ValueError(f"conv features lag by {self.features.delay} frames; expected 0")
        self.feat_channels = sm.feature_extractor.conv_layers[-1].conv.out_channels
        self.se = StreamGraph(chain_from_module(model.encoder_semantic), in_rate=1)
        self.ring = self.window + max_frames
        self.n_feat_states = len(self.features.templates)
        self.templates = [
            *self.features.templates,
            torch.zeros(self.feat_channels, self.ring),
            *self.se.templates,
        ]
        # Emformer-style cache of the last `left` committed frames' keys and values per layer, (L, 2, left, H).
        # K/V rather than layer inputs: re-projecting cached inputs costs 2 * left projections per layer,
        # more than all 4 * (block + lookahead) of the new frames once left > 2 * (block + lookahead); the
        # price is twice the memory. Frames before the signal's start are masked by position (no validity).
        self.cache = cache and left > 0
        self.cached_queries = cache
        if self.cache:
            cfg = sm.config
            self.templates.append(torch.zeros(cfg.num_hidden_layers, 2, left, cfg.hidden_size))

    @property
    def ring_index(self) -> int:
        return self.n_feat_states

    @property
    def se_slice(self) -> slice:
        return slice(self.n_feat_states + 1, self.n_feat_states + 1 + len(self.se.templates))

    @property
    def cache_index(self) -> int:
        """Index of the key/value cache in `templates` (only with `cache` and left > 0)."""
        return self.n_feat_states + 1 + len(self.se.templates)

    @property
    def frames_per_block(self) -> int:
        """Transformer query frames per block: the window, or block + lookahead with the cache."""
        return self.block + self.lookahead if self.cached_queries else self.window

    def latency_frames(self) -> int:
        """Frames after the end of frame t before its semantic latent can be out (worst case in a block)."""
        return self.block - 1 + self.lookahead

    def window_hidden(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(n_w, W, C_feat) cached conv features, (n_w, W) bool -> (n_w, W, H): mean of all hidden states."""
        sm = self.model.semantic_model
        hidden = sm.encoder(sm.feature_projection(feats), key_mask=valid)
        return torch.stack(hidden, dim=1).mean(dim=1)

    def embed_new(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(n, W, C_feat) window features, (n, W) bool -> (n, W - left, H): layer 0's input for the new frames.

        The positional conv reads the whole window (left frames included; zeros where masked and beyond the
        window, as `Encoder.forward` on the window), but only the new frames' outputs are computed."""
        enc = self.model.semantic_model.encoder
        x = self.model.semantic_model.feature_projection(feats) * valid[..., None].to(feats.dtype)
        pe = enc.pos_conv_embed
        k = pe.conv.kernel_size[0]
        pad = pe.conv.padding[0]
        # output t of the trimmed conv reads padded inputs t .. t + k - 1
        xp = F.pad(x.transpose(1, 2), (pad, pad))[..., self.left : x.shape[1] - 1 + k]
        y = F.conv1d(xp, pe.conv.weight, pe.conv.bias, groups=pe.conv.groups)
        h = x[:, self.left :] + pe.activation(y).transpose(1, 2)
        return h if enc.stable_layer_norm else enc.layer_norm(h)

    def cached_hidden(
        self, h: torch.Tensor, valid: torch.Tensor, kv: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer over the new frames only, the left context's keys/values from the cache.

        `h` (n, Q, H) layer 0's input of the Q = block + lookahead new frames, `valid` (n, left + Q) bool
        (keys: cached frames, then new ones), `kv` (n, L, 2, left, H) or None (left = 0). Returns the mean of
        all hidden states (n, Q, H) and the new frames' keys/values (n, L, 2, Q, H)."""
        enc = self.model.semantic_model.encoder
        q = h.shape[1]
        left = 0 if kv is None else kv.shape[3]
        bias = None
        if enc.is_wavlm:  # queries sit after the cached frames: their offset in the keys' frame
            bias = enc.layers[0].attention.compute_bias(q, left + q, query_offset=left)
        hidden: list[torch.Tensor] = [h]
        new_kv: list[torch.Tensor] = []
        for i, layer in enumerate(enc.layers):
            past = None if kv is None else (kv[:, i, 0], kv[:, i, 1])
            h = layer(h, bias, valid, past=past, new_kv=new_kv)
            hidden.append(h)
        return torch.stack(hidden, dim=1).mean(dim=1), torch.stack(new_kv, dim=1)

    def encode_block(
        self, hidden: torch.Tensor, states: list[torch.Tensor], start: np.ndarray, end: np.ndarray
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Semantic encoder over one block per row.

        `hidden` (n, H, block + delay): the block's features, then the encoder's `delay` lookahead frames
        (zero where the window has none); `start` (n,) the block's first frame; `end` (n,) where the signal
        is taken to end (the window's end, or the real end). Commits the block only; returns the block's
        latents (n, H', block) and the new states."""
        d = self.se.delay
        adv = np.full(len(start), self.block) if d else None
        y, new = self.se.step(hidden, states, start, adv=adv, end=end)
        return y[..., d : d + self.block], new


__all__ = ["PrefixGroupNorm", "SemanticStream", "feature_graph"]
