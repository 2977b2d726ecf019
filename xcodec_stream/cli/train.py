"""`xcodec-stream train`: train the speech-small X-Codec on a speech corpus (see checkpoints/speech-small)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from xcodec_stream.training.recipe import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train the small speech X-Codec (resumable; CPU or CUDA)",
        description="Train the speech-small X-Codec recipe on a folder of 16 kHz wav files (build one with "
        "`xcodec-stream corpus`). Writes a checkpoint folder (config.json, model.safetensors, "
        "preprocessor_config.json) plus train-state.pt (for --resume) and training-log.jsonl. The defaults "
        "are the recipe of checkpoints/speech-small's first stage, but for --dead-code-threshold (1.0 then; "
        "see the model card).",
    )
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="corpus folders (16 kHz wav files, searched recursively; clips drawn in proportion to length)",
    )
    p.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train-state.pt if it exists")
    p.add_argument(
        "--stop-at", type=int, default=None, help="pause after this step (resume later with --resume)"
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start from this exported checkpoint folder (e.g. checkpoints/speech-small) instead of random "
        "weights: its weights and codebooks (no k-means seeding; use --vq-start 0), fresh discriminators and "
        "optimisers, this run's own step count and schedule. Ignored when --resume finds a state to resume",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in fields(TrainConfig):
        value = getattr(defaults, f.name)
        if isinstance(value, tuple):
            continue
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(value),
            default=value,
            help=f"(default: {value})",
        )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from xcodec_stream.training.recipe import TrainConfig
    from xcodec_stream.training.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    config = TrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    )
    trainer = Trainer(
        args.data,
        args.out,
        config,
        device=args.device,
        resume=args.resume,
        progress=not args.quiet,
        init_from=args.init_from,
    )
    out = trainer.run(stop_at=args.stop_at)
    print(f"checkpoint written to {out}" if out else f"paused at step {trainer.step}; continue with --resume")
    return 0
