"""`xcodec-stream decode IN.npz OUT.wav`: codes file -> audio at the original (or a chosen) sample rate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xcodec_stream.cli.encode import add_model_arguments, load_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode",
        help="decode a codes file (.npz) to audio",
        description="Decode an xcodec-stream codes file. The output has the input file's length: by default "
        "at the input's sample rate; with --sample-rate at that rate (length scaled accordingly).",
    )
    p.add_argument("input", type=Path, help="codes file written by `xcodec-stream encode`")
    p.add_argument(
        "output", type=Path, help="audio file to write (format from the extension: .wav, .flac, ...)"
    )
    p.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="output sample rate (default: the sample rate of the file that was encoded)",
    )
    p.add_argument(
        "--subtype", default="PCM_16", help="soundfile subtype of the output, e.g. PCM_16 (default), FLOAT"
    )
    add_model_arguments(p, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def decode_to_array(model, codes_file, sample_rate: int | None = None):
    """Decoded mono float32 numpy waveform at `sample_rate` (default: the original one), original length."""
    import torch

    from xcodec_stream.cli.encode import resample

    codes = torch.from_numpy(codes_file.codes.astype("int64"))[None]
    audio = model.decode(codes).audio_values[0, 0].float().cpu()
    n = codes_file.num_samples
    audio = audio[:n] if audio.shape[0] >= n else torch.nn.functional.pad(audio, (0, n - audio.shape[0]))
    out_rate = sample_rate or codes_file.original_sample_rate
    audio = resample(audio, codes_file.sample_rate, out_rate)
    if out_rate == codes_file.original_sample_rate:
        target = codes_file.original_num_samples
    else:
        target = round(codes_file.original_num_samples * out_rate / codes_file.original_sample_rate)
    if audio.shape[0] >= target:
        audio = audio[:target]
    else:
        audio = torch.nn.functional.pad(audio, (0, target - audio.shape[0]))
    return audio.numpy(), out_rate


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf

    from xcodec_stream.model.codes_file import load_codes

    codes_file = load_codes(args.input)
    if args.sample_rate is not None and args.sample_rate <= 0:
        raise ValueError("--sample-rate must be positive")
    model_id = args.model or codes_file.model_id
    model = load_model(model_id, args.device, args.dtype)
    if model.config.hop_length != codes_file.hop_length or model.config.sample_rate != codes_file.sample_rate:
        raise ValueError(
            f"{args.input} was made with hop {codes_file.hop_length} at {codes_file.sample_rate} Hz, model "
            f"{model_id!r} has hop {model.config.hop_length} at {model.config.sample_rate} Hz"
        )
    audio, rate = decode_to_array(model, codes_file, args.sample_rate)
    if args.subtype.upper().startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)
    try:
        sf.write(str(args.output), audio, rate, subtype=args.subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot write {args.output}: {exc}") from None
    if not args.quiet:
        print(f"{args.input} -> {args.output}: {audio.shape[0]} samples at {rate} Hz", file=sys.stderr)
    return 0
