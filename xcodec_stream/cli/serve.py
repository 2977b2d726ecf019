"""`xcodec-stream serve`: load the model once and run the WebSocket daemon (config file, flags override it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import warnings
from pathlib import Path

log = logging.getLogger("xcodec_stream.serve")

FALLBACK_MODEL = "random:full"
# Trained here on a CPU (see its README): speech, at demo quality. Served when the configured checkpoint
# cannot be had, before random weights; absent from installs that are not a clone of the repository.
BUILTIN_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "speech-small"
BUILTIN_NAME = "checkpoints/speech-small"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the streaming WebSocket daemon",
        description="Serve X-Codec streaming over WebSocket (protocol: docs/PROTOCOL.md). Options come from "
        "the --config file; flags given here override it.",
    )
    p.add_argument("--config", type=Path, default=None, help="TOML config file, e.g. configs/default.toml")
    p.add_argument(
        "--model",
        default=None,
        help="hub id, local checkpoint directory, or random:tiny / random:full "
        "(default: hf-audio/xcodec-hubert-librispeech)",
    )
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--device", default=None, help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, help="model weights dtype: float32 (default), bfloat16, float16")
    p.add_argument(
        "--max-sessions", type=int, default=None, help="sessions admitted at once (more get server_full)"
    )
    p.add_argument(
        "--fallback-random",
        action="store_true",
        default=None,
        help="if the checkpoint cannot be had, serve the built-in demo checkpoint checkpoints/speech-small "
        "(or random:full weights where it is missing: LOUD warning, not speech)",
    )
    p.add_argument(
        "--cluster",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="join the daemons sharing this Redis as one service ([cluster] redis; docs/DEPLOY.md)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="engine processes ([worker] processes; 0 = the codec in a thread of the daemon)",
    )
    p.add_argument("--node", default=None, help="this daemon's name in the cluster ([cluster] node)")
    p.add_argument("--log-level", default=None, help="debug, info (default), warning, error")
    p.add_argument(
        "--log-format",
        default=None,
        choices=["text", "json"],
        help="log lines as text (default) or JSON objects (with a session field); tokens are never logged",
    )
    p.set_defaults(func=run)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
    return device


def load_model(model_id: str, device: str, dtype: str, fallback_random: bool):
    """(model, id actually served). A checkpoint that cannot be had is an error unless fallback_random;
    a checkpoint that is there but does not load is always an error."""
    from xcodec_stream.model.xcodec import XcodecModel

    def load(name: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning is logged by the loader as well
            return XcodecModel.from_pretrained(name, dtype=dtype, device=device)

    try:
        return load(model_id), model_id
    except OSError as exc:  # not on disk, not in the hub cache, hub unreachable
        if not fallback_random:
            raise RuntimeError(
                f"{str(exc).rstrip('.')} (serve: --model DIR or --model {FALLBACK_MODEL}); or fetch it while "
                f"online (huggingface-cli download {model_id}); or add --fallback-random"
            ) from None
        reason = str(exc).splitlines()[0]
    bar = "!" * 100
    if (BUILTIN_CHECKPOINT / "model.safetensors").is_file():
        lines = (
            f"!!! model {model_id!r} could not be loaded: {reason}",
            f"!!! serving the built-in checkpoint {BUILTIN_NAME}: DEMO QUALITY speech (a 4 M-parameter codec",
            "!!! trained for under two hours on a CPU; see its README). For real quality pass --model with a",
            "!!! public X-Codec checkpoint (README: 'Using a real checkpoint').",
        )
        fallback, name = str(BUILTIN_CHECKPOINT), BUILTIN_NAME
    else:
        lines = (
            f"!!! WARNING: model {model_id!r} could not be loaded: {reason}",
            f"!!! WARNING: serving {FALLBACK_MODEL} (RANDOM WEIGHTS): THE AUDIO WILL NOT BE SPEECH.",
            "!!! Good for trying the protocol, latency and load; useless for listening.",
        )
        fallback = name = FALLBACK_MODEL
    for line in (bar, *lines, bar):
        log.warning(line)
    return load(fallback), name


def run(args: argparse.Namespace) -> int:
    from xcodec_stream.serving.config import load_config
    from xcodec_stream.serving.logs import setup_logging

    overrides = {
        "model": args.model,
        "host": args.host,
        "port": args.port,
        "device": args.device,
        "dtype": args.dtype,
        "max_sessions": args.max_sessions,
        "fallback_random": args.fallback_random,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "cluster_redis": args.cluster,
        "cluster_node": args.node,
        "engine_processes": args.processes,
    }
    config = load_config(args.config, overrides)
    setup_logging(config.log_level, config.log_format, sys.stderr)
    device = resolve_device(config.device)
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    model, model_id = load_model(config.model, device, config.dtype, config.fallback_random)
    asyncio.run(serve(model, config, model_id, device))
    return 0


async def serve(model, config, model_id: str, device: str) -> None:
    from xcodec_stream.serving.config import engines_text
    from xcodec_stream.serving.server import XcodecServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / thread
            loop.add_signal_handler(sig, stop.set)
    async with XcodecServer(model, config, model_id=model_id, device=device) as server:
        http = server.url.replace("ws", "http", 1)  # ws -> http, wss -> https
        log.info(
            "xcodec-stream serving %s (health: %s/healthz) | model %s on %s %s | presets %s loaded, %s allowed | "
            "max %d sessions | %s%s",
            server.url,
            http,
            model_id + (" (RANDOM WEIGHTS: not speech)" if model_id.startswith("random:") else ""),
            device,
            config.dtype,
            ",".join(config.presets),
            ",".join(config.allowed_presets),
            config.max_sessions,
            engines_text(config.engine_processes),
            f" | cluster node {server.cluster.node}" if server.cluster is not None else "",
        )
        await stop.wait()
        log.info(
            "stopping: no new connections; flushing %d session(s) (at most %g s)",
            len(server.sessions),
            config.drain_timeout_s,
        )
    log.info("stopped")
