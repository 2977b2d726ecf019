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

import torch
import torch.nn.functional as F
from torch import nn

from xcodec_stream.model.layers import derived
from xcodec_stream.model.semantic import FeatureEncoder
from xcodec_stream.streaming.graph import StreamGraph, chain_from_module
from xcodec_stream.streaming.layers import Chain, Conv, Pointwise, StreamNode, time_mask


class _ChannelNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T) signal (the "layer" variant of the conv feature encoder)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class PrefixGroupNorm(StreamNode):
    """GroupNorm with one group per channel, normalising with the statistics of the stream so far.

    State per row (float64): per channel the mean and the sum of squared deviations (M2) of the valid inputs
    so far, and their count. Input j of a call is normalised with the statistics of every valid input up to
    and including j, so the result does not depend on chunking. Within a call the running sums are float32
    deviations from the carried mean (shifted data: no cancellation), merged into the float64 carry once per
    call: the per-sample work stays float32 (float64 over every sample cost a quarter of random:tiny's
    batched step), while the carry keeps hours of stream exact.
    """

    def __init__(self, norm: nn.GroupNorm, key: str = "") -> None:
        if norm.num_groups != norm.num_channels:
            raise ValueError("streaming GroupNorm supports one group per channel only")
        self.norm = norm
        self.key = key
        self.channels = norm.num_channels

    def bind(self, in_offset, in_rate, spec_in, states):
        self.in_offset = self.out_offset = in_offset
        self.in_rate = self.out_rate = in_rate
        self.spec_out = spec_in
        states[self.key] = self.carry(torch.zeros(self.channels), 0)
        return in_offset, in_rate, spec_in

    def carry(self, value: torch.Tensor, count: int) -> torch.Tensor:
        """The state after `count` inputs equal to `value` (per channel): rows [:C] = (mean, M2), [C] = count."""
        tpl = torch.zeros(self.channels + 1, 2, dtype=torch.float64)
        if count:
            tpl[: self.channels, 0] = value.double()
        tpl[self.channels, :] = count
        return tpl

    def step(self, x, n, state, new, st):
        b, c, length = x.shape
        old = state[self.key]  # (b, C + 1, 2)
        mean0, m2_0, n0 = old[:, :c, 0:1], old[:, :c, 1:2], old[:, c:, 0:1]
        d = x - mean0.to(x.dtype)  # deviations from the carried mean
        if st.masking:
            valid = time_mask(self.out_offset + st.pos * self.out_rate, length, n)  # (b, 1, n)
            d = d * valid.to(x.dtype)
            count = n0 + valid.double().cumsum(-1)
        else:
            valid = None
            count = n0 + torch.arange(1, length + 1, device=x.device, dtype=torch.float64)
        s1 = d.cumsum(-1)
        s2 = (d * d).cumsum_(-1)
        # the state: the statistics where the committed input ends (Chan et al.'s merge of two partitions),
        # read before the in-place work below reuses s1 and s2
        k = st.frames * self.in_rate
        if k:
            cnt_k = count[..., k - 1 : k]
            delta = s1[..., k - 1 : k].double() / cnt_k.clamp(min=1.0)
            m2 = m2_0 + s2[..., k - 1 : k].double() - cnt_k * delta * delta
            new[self.key] = torch.cat([torch.cat([mean0 + delta, m2], dim=-1), cnt_k.expand(b, 1, 2)], dim=1)
        else:
            new[self.key] = old
        inv = count.clamp(min=1.0).reciprocal().to(x.dtype)  # (b, 1, n)
        shift = s1.mul_(inv)  # running mean - carried mean
        var = s2.add_(m2_0.to(x.dtype)).mul_(inv).addcmul_(shift, shift, value=-1.0)
        scale = var.clamp_(min=0.0).add_(self.norm.eps).rsqrt_().mul_(self.norm.weight[:, None])
        # in place on s1, s2 and d: y is the only (b, C, n) buffer made past them
        y = torch.addcmul(self.norm.bias[:, None], d.sub_(shift), scale)
        return (y * valid.to(y.dtype) if valid is not None else y), n

    def constant(self, value):
        return self.norm.bias.detach().float().clone()  # a constant channel normalises to 0 -> bias


def feature_graph(fe: FeatureEncoder, pad: int, hop: int, prefix: str = "semantic.features") -> StreamGraph:
    """The conv feature encoder as a streaming graph over the raw waveform (padded by `pad` as offline).

    The layers start with a head start: their first outputs (computed from padding alone) are not emitted
    but put into the next layers' initial buffers, so that feature frame j is out once frame j's samples are
    in (it reads samples up to j*hop + hop - 1 - (hop/2 - 80) at most).
    """
    nodes: list[StreamNode] = []
    for i, layer in enumerate(fe.conv_layers):
        key = f"{prefix}.conv_layers.{i}"
        nodes.append(Conv(layer.conv, key=f"{key}.conv", padding=pad if i == 0 else 0, head=True))
        if layer.norm == "group":
            nodes.append(PrefixGroupNorm(layer.layer_norm, key=f"{key}.norm"))
        elif layer.norm == "layer":
            nodes.append(Pointwise(_ChannelNorm(layer.layer_norm), key=f"{key}.norm", zero_preserving=False))
        nodes.append(Pointwise(layer.activation, key=f"{key}.activation"))
    graph = StreamGraph(Chain(nodes, key=prefix), in_rate=hop)
    _fill_head(graph)
    return graph


@torch.no_grad()
def _fill_head(graph: StreamGraph) -> None:
    """Initial buffers = the values the offline layers compute from padding alone (constants)."""
    value = torch.zeros(1)  # the waveform's zero padding
    for node in graph.chain.children:
        if isinstance(node, Conv) and node.buffer:
            times = node.in_offset - node.buffer + torch.arange(node.buffer)
            # times before 0 are padding of this layer's own input (zeros), later ones the head value
            graph.templates[node.key] = value[:, None] * (times >= 0).to(value.dtype)[None, :]
        elif isinstance(node, PrefixGroupNorm):
            head = max(0, node.in_offset)  # outputs before the first emitted one, all equal to `value`
            graph.templates[node.key] = node.carry(value.expand(node.channels), head)
        value = node.constant(value)


class SemanticStream:
    """The semantic branch of one streaming encoder, one static step at a time.

    A step commits K frames of waveform (frames [pos, P), P = pos + K): their conv features join the
    feature ring; the transformer runs over the window of the last `left + K + lookahead` feature frames
    (with `cache`: the K + lookahead newest frames as queries, the left context's keys/values from the
    cache); the semantic encoder turns the hidden states of frames [P - K - lookahead, P - lookahead) into
    latents, the lookahead frames feeding its own lookahead speculatively. State keys: the feature graph's,
    `semantic.feature_ring`, the semantic encoder's, `semantic.kv` (with the cache).
    """

    def __init__(self, model: nn.Module, block: int, left: int, lookahead: int, cache: bool = False) -> None:
        if block < 1 or left < 0 or lookahead < 0:
            raise ValueError(
                f"semantic block must be >= 1 and context/lookahead >= 0, got {block}, {left}, {lookahead}"
            )
        self.model = model
        sm = model.semantic_model
        self.block, self.left, self.lookahead = block, left, lookahead
        self.window = left + block + lookahead
        self.features = feature_graph(sm.feature_extractor, model.pad, model.hop_length, "semantic.features")
        if self.features.delay != 0:
            raise ValueError(f"conv features lag by {self.features.delay} frames; expected 0")
        self.feat_channels = sm.feature_extractor.conv_layers[-1].conv.out_channels
        self.se = StreamGraph(
            chain_from_module(model.encoder_semantic, "semantic.encoder"), 1, spec_in=lookahead
        )
        self.se.trim(self.se.delay)  # the step keeps the latents of the committed frames only
        self.templates: dict[str, torch.Tensor] = {
            **self.features.templates,
            "semantic.feature_ring": torch.zeros(self.feat_channels, self.window - block),
            **self.se.templates,
        }
        # Emformer-style cache of the last `left` committed frames' keys and values per layer, (L, 2, left, H).
        # K/V rather than layer inputs: re-projecting cached inputs costs 2 * left projections per layer,
        # more than all 4 * (block + lookahead) of the new frames once left > 2 * (block + lookahead); the
        # price is twice the memory. Frames before the signal's start are masked by position.
        self.cache = cache and left > 0
        self.cached_queries = cache
        self._cache: dict = {}  # prepared kernels (`derived`)
        if cache:  # prepared now, not inside a compiled step
            pe = sm.encoder.pos_conv_embed.conv
            self._pos_conv(pe.weight.new_zeros(1, pe.in_channels, pe.kernel_size[0]), pe)
        if self.cache:
            cfg = sm.config
            self.templates["semantic.kv"] = torch.zeros(cfg.num_hidden_layers, 2, left, cfg.hidden_size)

    @property
    def frames_per_block(self) -> int:
        """Transformer query frames per block: the window, or block + lookahead with the cache."""
        return self.block + self.lookahead if self.cached_queries else self.window

    def latency_frames(self) -> int:
        """Frames after the end of frame t before its semantic latent can be out (worst case in a step)."""
        return self.block - 1 + self.lookahead

    @property
    def warmup(self) -> int:
        """Frames after which the feature and semantic-encoder graphs need no start masks."""
        return max(self.features.warmup, self.se.warmup + self.lookahead)

    def step(
        self,
        x: torch.Tensor,
        state: dict[str, torch.Tensor],
        new: dict[str, torch.Tensor],
        pos: torch.Tensor,
        end: torch.Tensor,
        masking: bool = True,
    ) -> torch.Tensor:
        """x (b, K * hop) the committed waveform; writes the new state into `new`. Returns the latents of
        frames [P - K - lookahead, P - lookahead), (b, C_sem, K)."""
        K, S, W = self.block, self.lookahead, self.window
        feats, f_new = self.features.step(x[:, None], state, pos, end, frames=K, masking=masking)
        new.update(f_new)
        window = torch.cat([state["semantic.feature_ring"], feats], dim=-1)  # frames [P - W, P)
        new["semantic.feature_ring"] = window[..., K:]
        p = pos + K
        stop = torch.minimum(p, end)  # the signal is taken to end where the input stops
        valid = time_mask(p - W, W, stop)[:, 0]  # (b, W)
        feats_t = window.transpose(1, 2)
        if self.cached_queries:
            h0 = self.embed_new(feats_t, valid)
            kv = state["semantic.kv"] if self.cache else None
            hidden, kv_new = self.cached_hidden(h0, valid, kv)  # (b, K + S, H)
            if self.cache:
                new["semantic.kv"] = torch.cat([kv, kv_new[:, :, :, :K]], dim=3)[:, :, :, -self.left :]
        else:
            hidden = self.window_hidden(feats_t, valid)[:, self.left :]
        se_in = (hidden * valid[:, self.left :, None].to(hidden.dtype)).transpose(1, 2)
        y, se_new = self.se.step(se_in, state, p - K - S, stop, frames=K, speculate=True, masking=masking)
        new.update(se_new)
        d = self.se.delay
        return y[..., d : d + K]

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
        h = x[:, self.left :] + pe.activation(self._pos_conv(xp, pe.conv)).transpose(1, 2)
        return h if enc.stable_layer_norm else enc.layer_norm(h)

    def _pos_conv(self, xp: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
        """The grouped positional conv for a few outputs as one batched matmul over the groups: oneDNN's
        grouped conv reads its 128-tap kernel at a fraction of memory speed when only a few outputs are
        wanted (18 ms of a 80 ms step on random:full, 1 thread)."""
        g, k = conv.groups, conv.kernel_size[0]
        b, c, _ = xp.shape
        n = xp.shape[-1] - k + 1
        # (C_out, C_in / g, k) -> (g, C_in / g * k, C_out / g)
        w = derived(
            self._cache,
            "pos_conv",
            conv.weight,
            lambda w: w.reshape(g, w.shape[0] // g, -1).transpose(1, 2).contiguous(),
        )
        win = xp.unfold(-1, k, 1).reshape(b, g, c // g, n, k).permute(1, 0, 3, 2, 4).reshape(g, b * n, -1)
        y = torch.bmm(win, w).view(g, b, n, -1).permute(1, 0, 3, 2).reshape(b, -1, n)
        return y if conv.bias is None else y + conv.bias[:, None]

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


__all__ = ["PrefixGroupNorm", "SemanticStream", "feature_graph"]
