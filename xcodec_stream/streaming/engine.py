"""The streaming engines' interface as typed Protocols: what the serving worker calls on a codec model and on
the slot encoders/decoders it builds. StreamingEncoder/StreamingDecoder (on XcodecModel) conform, and so does
the serving fake codec (xcodec_stream.serving.fake_codec); tests/streaming/test_engine_protocol.py checks both.

No torch here: the fake codec and its users need none. Chunks and results are arrays (numpy or torch, on the
CPU): the worker converts what comes back with numpy. Arguments the worker passes by position are
positional-only here, so implementations may name them as they like.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EncoderEngine(Protocol):
    """16 kHz float32 audio in, codes (n_q, F) out, over `batch_size` slots: one stream per slot."""

    @property
    def batch_size(self) -> int: ...

    @property
    def frame_size(self) -> int:
        """Samples per code frame."""

    @property
    def step_frames(self) -> int:
        """Frames per engine step (codes come out in groups of this many, flush aside)."""

    @property
    def lookahead_frames(self) -> int:
        """Frames after frame t whose samples must be in before frame t's code is out (worst case)."""

    @property
    def latency_ms(self) -> float: ...

    @property
    def atomic_steps(self) -> bool:
        """A step that raises (out of memory) leaves its slots as they were, so the rest can be retried."""

    def reset(self, slot: int, /) -> None:
        """A new stream in `slot`."""

    def set_bandwidth(self, slot: int, bandwidth: float | None, /) -> None:
        """The slot's codes keep the quantizers of `bandwidth` (None: all)."""

    def lead_for(self, decoder_step: int, /) -> int:
        """The `lead` for DecoderEngine.reset that makes a decoder of that step step as these codes arrive."""

    def step_slots(self, chunks: dict[int, Any], /) -> Mapping[int, Any]:
        """{slot: pcm (n,)} -> {slot: codes (n_q, F_new)} for every slot given."""

    def flush_slots(self, slots: list[int], /) -> Mapping[int, Any]:
        """End these slots' streams: the codes still held (the last partial frame zero-padded)."""


@runtime_checkable
class DecoderEngine(Protocol):
    """Codes (n_q, F) in, 16 kHz float32 audio out, over `batch_size` slots."""

    @property
    def batch_size(self) -> int: ...

    @property
    def step_frames(self) -> int: ...

    @property
    def lookahead_frames(self) -> int: ...

    @property
    def latency_ms(self) -> float: ...

    def reset(self, slot: int, /, lead: int = 0) -> None:
        """A new stream in `slot`, starting `lead` frames (0 <= lead < step_frames) before time 0."""

    def step_slots(self, chunks: dict[int, Any], /) -> Mapping[int, Any]:
        """{slot: codes (n_q, F)} -> {slot: samples (n,)} now final."""

    def flush_slots(self, slots: list[int], /) -> Mapping[int, Any]: ...


@runtime_checkable
class AtomicSlots(Protocol):
    """Optional: engines that can undo a failed step themselves (the worker uses `atomic` where present)."""

    def atomic(self, slots: Iterable[int], /) -> AbstractContextManager[None]: ...


@runtime_checkable
class WarmUp(Protocol):
    """Optional: engines that compile their step ahead of the first tick (the worker calls it at build)."""

    def warm_up(self) -> float: ...


@runtime_checkable
class CodecConfig(Protocol):
    """The model figures the daemon tells clients (serving.server.codec_info) and the worker's n_q."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def hop_length(self) -> int: ...

    @property
    def frame_rate(self) -> float: ...

    @property
    def num_quantizers(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...

    @property
    def target_bandwidths(self) -> tuple[float, ...]: ...

    def bandwidth_to_num_quantizers(self, bandwidth: float | None = None) -> int: ...


@runtime_checkable
class CodecModel(Protocol):
    """What the serving worker needs of a model: its config and builders of slot engines."""

    @property
    def config(self) -> CodecConfig: ...

    @property
    def device(self) -> Any: ...

    def streaming_encoder(
        self,
        batch_size: int = 1,
        bandwidth: float | None = None,
        latency: str = "balanced",
        compile: str | bool = "eager",
    ) -> EncoderEngine: ...

    def streaming_decoder(
        self, batch_size: int = 1, latency: str = "balanced", compile: str | bool = "eager"
    ) -> DecoderEngine: ...
