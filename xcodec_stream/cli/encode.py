"""`xcodec-stream encode IN OUT.npz`: any audio file soundfile reads -> X-Codec codes file."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from xcodec_stream.cli.audio_file import read_audio
from xcodec_stream.model.loading import DEFAULT_MODEL_ID

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode an audio file to a codes file (.npz)",
        description="Encode any file soundfile can read (any sample rate; resampled to 16 kHz, stereo "
        "downmixed) into X-Codec codes, written as a .npz codes file (docs/CODES_FORMAT.md).",
    )
    p.add_argument("input", type=Path, help="audio file (wav, flac, ogg, ... anything soundfile reads)")
    p.add_argument("output", type=Path, help="codes file to write (.npz)")
    add_model_arguments(p)
    p.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="target bandwidth in kbps, one of the model's (0.5, 1, 1.5, 2, 4 for the public ones); default: the highest",
    )
    p.add_argument(
        "--chunk-seconds",
        type=float,
        default=None,
        help="encode long files in independent chunks of this many seconds (bounded memory; codes near chunk "
        "seams then differ from a whole-file encode). Default: the whole file at once, exact",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_model_arguments(p: argparse.ArgumentParser, default: str | None = DEFAULT_MODEL_ID) -> None:
    p.add_argument(
        "--model",
        default=default,
        help=f"hub id, local checkpoint directory, or random:tiny / random:full (default: {default or 'the model named in the codes file'})",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")


def load_model(name: str, device: str, dtype: str):
    """The model, with one-line errors (a hub id that cannot be had says so and suggests alternatives)."""
    from xcodec_stream.model.xcodec import XcodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is logged too: shown once, not twice
        return XcodecModel.from_pretrained(name, dtype=dtype, device=device)


def resample(wave, orig_rate: int, new_rate: int):
    import torch
    import torchaudio.functional as AF

    x = torch.as_tensor(wave, dtype=torch.float32)
    if orig_rate == new_rate:
        return x
    return AF.resample(x, orig_rate, new_rate)


def encode_array(model, wave16k, bandwidth: float | None, chunk_seconds: float | None, progress=None):
    """(n_q, F) int64 codes of a 16 kHz mono waveform (torch 1-D), as the feature extractor + encode give."""
    import torch

    from xcodec_stream.model.feature_extraction import XcodecFeatureExtractor

    fe = XcodecFeatureExtractor(sampling_rate=model.config.sample_rate, hop_length=model.config.hop_length)
    hop = model.config.hop_length
    if chunk_seconds is None:
        chunks = [wave16k]
    else:
        if chunk_seconds <= 0:
            raise ValueError("--chunk-seconds must be positive")
        step = max(1, round(chunk_seconds * model.config.sample_rate / hop)) * hop
        chunks = [wave16k[i : i + step] for i in range(0, wave16k.shape[0], step)]
    parts = []
    for chunk in chunks:
        inputs = fe(chunk.numpy(), sampling_rate=model.config.sample_rate, return_tensors="pt")
        parts.append(model.encode(inputs["input_values"], bandwidth=bandwidth).audio_codes[0].cpu())
        if progress is not None:
            progress.update(1)
    return torch.cat(parts, dim=1)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from xcodec_stream.model.codes_file import CodesFile

    wave, rate, frames = read_audio(args.input)
    chunks = 1
    sr = 16000
    if args.chunk_seconds:
        chunks = max(1, -(-int(frames * sr / rate) // max(1, int(args.chunk_seconds * sr))))
    with tqdm(total=2 + chunks, desc="encode", unit="step", disable=args.quiet, file=sys.stderr) as bar:
        bar.set_postfix_str("loading model")
        model = load_model(args.model, args.device, args.dtype)
        model.config.bandwidth_to_num_quantizers(
            args.bandwidth
        )  # unsupported bandwidth: fail before the work
        bar.update(1)
        bar.set_postfix_str("resampling")
        wave16k = resample(wave, rate, model.config.sample_rate)
        bar.update(1)
        bar.set_postfix_str("encoding")
        codes = encode_array(model, wave16k, args.bandwidth, args.chunk_seconds, progress=bar)
    CodesFile(
        codes=codes.numpy(),
        frame_rate=model.config.frame_rate,
        sample_rate=model.config.sample_rate,
        hop_length=model.config.hop_length,
        model_id=str(args.model),
        num_samples=int(wave16k.shape[0]),
        original_sample_rate=rate,
        original_num_samples=frames,
        codebook_size=model.config.codebook_size,
        bandwidth=args.bandwidth if args.bandwidth is not None else float(model.config.target_bandwidths[-1]),
    ).save(args.output)
    if not args.quiet:
        print(
            f"{args.input} -> {args.output}: {codes.shape[0]} quantizers x {codes.shape[1]} frames "
            f"({codes.shape[1] / model.config.frame_rate:.2f} s at {model.config.frame_rate} Hz)",
            file=sys.stderr,
        )
    return 0
