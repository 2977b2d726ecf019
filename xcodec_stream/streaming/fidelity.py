"""Fidelity of streaming against offline: code agreement per quantizer, SNR of the decoded audio, latency."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from xcodec_stream.streaming.presets import StreamingOptions


@dataclass
class Reference:
    """Offline results for one clip (16 kHz mono, right-padded to whole frames as the feature extractor does)."""

    audio: torch.Tensor  # (n,) the clip as given
    codes: torch.Tensor  # (n_q, F) offline encode
    decoded: torch.Tensor  # (320 * F,) offline decode of the offline codes


@dataclass
class Fidelity:
    """One configuration measured over a set of clips."""

    label: str
    options: StreamingOptions
    encoder_ms: float
    decoder_ms: float
    agreement: list[float]  # % of frames whose code equals offline, per quantizer
    snr_db: float  # streamed encode + streamed decode vs offline encode + decode
    decode_snr_db: float  # streamed decode of the offline codes vs offline decode
    semantic_cost: float  # semantic-transformer query frames per frame of audio (offline: 1)
    frames: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return self.encoder_ms + self.decoder_ms


def offline_reference(model: torch.nn.Module, audio: torch.Tensor) -> Reference:
    hop = model.hop_length
    x = torch.nn.functional.pad(audio, (0, -audio.shape[-1] % hop))
    codes = model.encode(x[None, None]).audio_codes
    decoded = model.decode(codes).audio_values
    return Reference(audio=audio, codes=codes[0].cpu(), decoded=decoded[0, 0].float().cpu())


def stream_encode(model: torch.nn.Module, audio: torch.Tensor, options: StreamingOptions) -> torch.Tensor:
    """(n,) -> (n_q, F) codes through the streaming encoder (one chunk: results do not depend on chunking)."""
    enc = model.streaming_encoder(latency=options)
    return torch.cat([enc.step(audio[None]), enc.flush()], dim=-1)[0]


def stream_decode(model: torch.nn.Module, codes: torch.Tensor, options: StreamingOptions) -> torch.Tensor:
    dec = model.streaming_decoder(latency=options)
    return torch.cat([dec.step(codes[None]), dec.flush()], dim=-1)[0]


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """10 log10(energy of reference / energy of the difference); inf when equal."""
    noise = float(((estimate.double() - reference.double()) ** 2).sum())
    signal = float((reference.double() ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def measure(
    model: torch.nn.Module, refs: list[Reference], options: StreamingOptions, label: str, progress=None
) -> Fidelity:
    """Stream every clip through encoder and decoder with `options`; compare with the offline references."""
    enc = model.streaming_encoder(latency=options)
    dec = model.streaming_decoder(latency=options)
    n_q = refs[0].codes.shape[0]
    matches = torch.zeros(n_q, dtype=torch.float64)
    frames = 0
    ref_all, e2e_all, dec_all = [], [], []
    for ref in refs:
        codes = stream_encode(model, ref.audio, options)
        if codes.shape != ref.codes.shape:
            raise RuntimeError(
                f"streamed codes have shape {tuple(codes.shape)}, offline {tuple(ref.codes.shape)}"
            )
        matches += (codes == ref.codes).double().sum(dim=1)
        frames += codes.shape[1]
        ref_all.append(ref.decoded)
        e2e_all.append(stream_decode(model, codes, options))
        dec_all.append(stream_decode(model, ref.codes, options))
        if progress is not None:
            progress.update(1)
    reference = torch.cat(ref_all)
    sem = enc.semantic
    return Fidelity(
        label=label,
        options=options,
        encoder_ms=enc.latency_ms,
        decoder_ms=dec.latency_ms,
        agreement=(100.0 * matches / max(frames, 1)).tolist(),
        snr_db=snr_db(reference, torch.cat(e2e_all)),
        decode_snr_db=snr_db(reference, torch.cat(dec_all)),
        semantic_cost=sem.frames_per_block / sem.block,
        frames=frames,
    )


def sweep() -> list[tuple[str, StreamingOptions]]:
    """Custom options between and around the presets, for the fidelity/latency curve (160 to 560 ms)."""
    points = [
        # acoustic, decoder, decoder block, semantic block, left context, semantic lookahead
        (3, 3, 2, 3, 16, 3),
        (3, None, 4, 4, 24, 3),  # balanced's geometry without the key/value cache (and 24 frames of left)
        (6, None, 4, 4, 24, 6),
        (12, None, 4, 8, 50, 8),
    ]
    # with the semantic key/value cache: a long left context costs little more than a short one
    cached = [(3, None, 4, 4, 100, 3)]
    out = []
    for cache, rows in ((False, points), (True, cached)):
        for acoustic, decoder, dblock, block, left, lookahead in rows:
            opts = StreamingOptions(
                acoustic_lookahead=acoustic,
                decoder_lookahead=decoder,
                decoder_block=dblock,
                semantic_block=block,
                semantic_left_context=left,
                semantic_lookahead=lookahead,
                semantic_cache=cache,
            )
            dec = f"d{decoder}/{dblock}" if decoder is not None else "d exact"
            tag = " kv" if cache else ""
            out.append((f"a{acoustic} {dec} s{block}/{left}/{lookahead}{tag}", opts))
    return out
