"""Latency options of the streaming engine and the named presets (`exact`, `balanced`, `low`).

All numbers are in frames of the model (320 samples = 20 ms at 16 kHz). Fidelity of each preset is
measured by `xcodec-stream eval` and written to docs/STREAMING.md; the figures quoted below come from there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class StreamingOptions:
    """How far ahead the streaming encoder and decoder may look, and how the semantic branch is windowed.

    Where a part may not wait for its whole receptive field, it computes its outputs as if the signal
    ended where the input stops (the missing future is zeros, as offline at a real end), every
    `..._block` frames from a copy of its state; the real state only ever takes real input.

    - `acoustic_lookahead`: frames after a block that the acoustic (DAC) encoder waits for before
      emitting the block's latents. None = its whole receptive field (exact: 28 frames for 8-5-4-2 strides,
      latents equal offline). The acoustic encoder uses the semantic block grid.
    - `decoder_lookahead`: frames after a decoder block the decoder waits for before emitting the block's
      samples. None = its whole receptive field (exact: output equals offline decode, all of frame t out
      once frame t+10 is in).
    - `decoder_block`: frames emitted together when `decoder_lookahead` is not None (cost: one
      speculative run per block).
    - `semantic_block`: frames computed per semantic-model (HuBERT/WavLM) call. Larger = cheaper, but the
      first frame of a block waits for the whole block.
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
    # Decoder exact (== offline decode), acoustic encoder exact (latent == offline); the semantic window as
    # large as fits in the acoustic encoder's own 28 frames, so it adds no latency. 560 + 180 = 740 ms.
    "exact": StreamingOptions(
        acoustic_lookahead=None,
        decoder_lookahead=None,
        semantic_block=10,
        semantic_left_context=100,
        semantic_lookahead=19,
    ),
    # 300 ms: the decoder stays exact (180 ms; decoded audio == offline decode of the same codes) and the
    # encoder gets 6 frames. Measured on random:full, blocks of 4 with 3 frames of lookahead agreed with
    # offline as well as 2 + 5 and better than 6 + 1, at half the semantic-model cost of 2 + 5. The
    # key/value cache runs the transformer on 7 frames per block instead of the whole window (117 -> 65
    # GFLOP per audio second in all) for the same agreement (52-53 % on q1), and makes 50 frames of left
    # context cost about as much as 24.
    "balanced": StreamingOptions(
        acoustic_lookahead=3,
        decoder_lookahead=None,
        semantic_block=4,
        semantic_left_context=50,
        semantic_lookahead=3,
        semantic_cache=True,
    ),
    # 100 ms: encoder 3 frames (blocks of 2, 2 frames of lookahead), decoder 2 frames (one-frame blocks,
    # 2 frames of lookahead). The semantic model runs every 2 frames (on 4 frames, with the key/value
    # cache) and the decoder drains every frame: real time needs a GPU.
    "low": StreamingOptions(
        acoustic_lookahead=2,
        decoder_lookahead=2,
        decoder_block=1,
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
