"""Latency options of the streaming engine and the named presets (`exact`, `balanced`, `low`).

All numbers are in frames of the model (320 samples = 20 ms at 16 kHz). Fidelity of each preset is
measured by `xcodec-stream eval` and written to docs/STREAMING.md; the figures quoted below come from there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class StreamingOptions:
    """How far ahead the streaming encoder and decoder may look, and how the semantic branch is windowed.

    The encoder moves in steps of `semantic_block` frames, the decoder in steps of `decoder_block` frames
    (static shapes: every row of a batch moves by the same amount). Where a part may not wait for its whole
    receptive field, each step also computes its outputs as if the signal ended where the input stops (the
    missing future is zeros, as offline at a real end); the state only ever takes real input.

    - `acoustic_lookahead`: frames after a frame that the acoustic (DAC) encoder waits for before
      emitting its latent. None = its whole receptive field (exact: 28 frames for 8-5-4-2 strides,
      latents equal offline).
    - `decoder_lookahead`: frames after a frame the decoder waits for before emitting its samples. None =
      its whole receptive field (exact: output equals offline decode, all of frame t out once frame t+10
      is in).
    - `decoder_block`: the decoder's step in frames (cost: one speculative tail per step when
      `decoder_lookahead` is set).
    - `semantic_block`: the encoder's step in frames: one semantic-model (HuBERT/WavLM) call and one
      acoustic speculative tail per step. Larger = cheaper, but the first frame of a step waits for the
      whole step.
    - `semantic_left_context`: frames before the block in the semantic model's window (cost, not latency).
    - `semantic_lookahead`: frames after the block in the window (latency).
    - `semantic_cache`: run the semantic transformer on the block + lookahead frames only; the left
      context's keys/values come from a per-layer cache of earlier blocks (Emformer-style), instead of
      recomputing the whole window. Cost per block: (block + lookahead) queries instead of the window;
      left context becomes cheap. Approximate in a different way: cached frames keep the representations
      they had as block frames (computed with their own, earlier context).
    """

    acoustic_lookahead: int | None = None
    decoder_lookahead: int | None = None
    decoder_block: int = 4
    semantic_block: int = 8
    semantic_left_context: int = 50
    semantic_lookahead: int = 8
    semantic_cache: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.semantic_cache, bool):
            raise ValueError(f"StreamingOptions.semantic_cache must be a bool, got {self.semantic_cache!r}")
        for f in fields(self):
            if f.name == "semantic_cache":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in ("acoustic_lookahead", "decoder_lookahead"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"StreamingOptions.{f.name} must be an integer >= 0, got {value!r}")
        for name in ("semantic_block", "decoder_block"):
            if getattr(self, name) < 1:
                raise ValueError(f"StreamingOptions.{name} must be >= 1, got {getattr(self, name)}")

    def with_(self, **changes: int | bool | None) -> StreamingOptions:
        return replace(self, **changes)


PRESETS: dict[str, StreamingOptions] = {
    # Decoder exact (== offline decode), acoustic encoder exact (latent == offline): the encoder waits for the
    # acoustic encoder's whole receptive field (28 frames), and the semantic lookahead fits inside it at no
    # cost in latency. Steps of 5 frames with the key/value cache keep the transformer at 5.6x its offline
    # cost (28 query frames per 5 new ones). (5 - 1 + 28) * 20 + 180 = 820 ms.
    "exact": StreamingOptions(
        acoustic_lookahead=None,
        decoder_lookahead=None,
        decoder_block=5,
        semantic_block=5,
        semantic_left_context=100,
        semantic_lookahead=23,
        semantic_cache=True,
    ),
    # 300 ms: the decoder stays exact (180 ms; decoded audio == offline decode of the same codes) and the
    # encoder gets 3 + 3 frames in steps of 4 (80 ms). Measured on random:full, blocks of 4 with 3 frames of
    # lookahead agreed with offline as well as 2 + 5 and better than 6 + 1, at half the semantic-model cost
    # of 2 + 5. The key/value cache runs the transformer on 7 frames per step instead of the whole window,
    # and makes 50 frames of left context cost about as much as 24.
    "balanced": StreamingOptions(
        acoustic_lookahead=3,
        decoder_lookahead=None,
        decoder_block=4,
        semantic_block=4,
        semantic_left_context=50,
        semantic_lookahead=3,
        semantic_cache=True,
    ),
    # 100 ms: encoder 3 frames (steps of 2, 2 frames of lookahead), decoder 2 frames of lookahead. Both
    # step every 2 frames: the decoder's steps fall when the encoder's codes arrive, so steps of 2 cost no
    # latency over steps of 1 in a loopback or a room, and half the speculative tails (each step computes
    # only the tail's outputs that its 2 emitted frames read: `StreamGraph.keep`). The semantic model runs
    # every 2 frames (on 4 frames, with the key/value cache).
    "low": StreamingOptions(
        acoustic_lookahead=2,
        decoder_lookahead=2,
        decoder_block=2,
        semantic_block=2,
        semantic_left_context=50,
        semantic_lookahead=2,
        semantic_cache=True,
    ),
}


def resolve(latency: str | StreamingOptions) -> StreamingOptions:
    """A preset name or explicit options -> options."""
    if isinstance(latency, StreamingOptions):
        return latency
    if isinstance(latency, str) and latency in PRESETS:
        return PRESETS[latency]
    raise ValueError(
        f"unknown latency preset {latency!r}; use one of {', '.join(PRESETS)} or StreamingOptions(...)"
    )
