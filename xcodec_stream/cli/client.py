"""`xcodec-stream client`: stream a file or the microphone through the daemon, publish to or listen to a room."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from pathlib import Path

DEFAULT_URL = "ws://127.0.0.1:8765"
TOKEN_ENV = "XCODEC_STREAM_TOKEN"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "client",
        help="stream a file or the microphone through the daemon; publish to / listen to a room",
        description="Examples: --file in.wav --out out.wav (loopback: codes and back) | --file in.wav "
        "--codes-out c.npz (encode only) | --mic (microphone -> server -> speaker) | --publish ROOM --file "
        "in.wav | --listen ROOM [--out room.wav]. Prints a latency report at the end.",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"daemon address (default {DEFAULT_URL})")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="audio file to stream (any rate; soundfile formats)")
    src.add_argument("--mic", action="store_true", help="stream the microphone (sounddevice)")
    src.add_argument("--listen", metavar="ROOM", help="listen to a room: --out/--codes-out, or play it")
    p.add_argument(
        "--publish", metavar="ROOM", help="publish --file or --mic to this room instead of a loopback"
    )
    p.add_argument("--out", type=Path, help="write the reconstruction (same rate and length as the input)")
    p.add_argument(
        "--codes-out", type=Path, help="write the codes (.npz codes file, as `xcodec-stream encode`)"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="pace the file in real time (default)",
    )
    pace.add_argument(
        "--fast", dest="realtime", action="store_false", help="send the file as fast as the server takes it"
    )
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message in ms (default 20)")
    p.add_argument(
        "--latency", default=None, help="latency preset: exact | balanced | low (default: the server's)"
    )
    p.add_argument(
        "--bandwidth", type=float, default=None, help="kbps, one of the model's (default: the highest)"
    )
    p.add_argument("--format", default="f32", choices=["s16", "f32"], help="PCM on the wire (default f32)")
    p.add_argument(
        "--input-device", default=None, help="--mic: input device (name or index; default: system's)"
    )
    p.add_argument("--output-device", default=None, help="--mic/--listen: output device (name or index)")
    p.add_argument(
        "--device-rate",
        type=int,
        default=None,
        help="--mic/--listen: device sample rate (default: the device's)",
    )
    p.add_argument(
        "--jitter-ms",
        type=float,
        default=80.0,
        help="--mic/--listen: playback jitter buffer in ms (default 80)",
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="--mic: stop after this long (default: until Ctrl-C)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"auth token for a daemon that requires one (default: ${TOKEN_ENV})",
    )
    p.add_argument(
        "--cafile", type=Path, default=None, help="wss://: trust this CA / self-signed certificate"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reconnect and resume the session if the connection drops (within the server's grace period)",
    )
    p.set_defaults(func=run)


def _connect_options(args: argparse.Namespace) -> dict:
    """Client.connect keywords shared by every mode: auth token, TLS trust, automatic resume."""
    ctx = ssl.create_default_context(cafile=str(args.cafile)) if args.cafile else None
    return {"token": args.token, "ssl": ctx, "resume": args.resume}


def _device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def run(args: argparse.Namespace) -> int:
    if args.publish and args.listen:
        raise ValueError("--publish and --listen exclude each other")
    if args.file is not None and not (args.out or args.codes_out or args.publish):
        raise ValueError("--file needs --out and/or --codes-out (or --publish ROOM)")
    if args.mic and (args.out or args.codes_out):
        raise ValueError("--mic plays to the speaker; --out/--codes-out are for --file and --listen")
    if args.file is not None:
        return asyncio.run(_file(args))
    if args.mic:
        return asyncio.run(_mic(args))
    return asyncio.run(_listen(args))


async def _file(args: argparse.Namespace) -> int:
    import soundfile as sf

    from xcodec_stream.cli.audio_file import read_audio
    from xcodec_stream.clients.client import Client, stream
    from xcodec_stream.clients.latency import format_report
    from xcodec_stream.clients.mic import client_rate_for
    from xcodec_stream.streaming.resample import resample

    audio, file_rate, _ = read_audio(args.file)
    rate = client_rate_for(file_rate)
    x = resample(audio, file_rate, rate) if rate != file_rate else audio
    if args.publish:
        mode, want = "publish", (["codes"] if args.codes_out else None)
    elif args.out:
        mode, want = "loopback", ["audio", "codes"] if args.codes_out else ["audio"]
    else:
        mode, want = "encode", None
    client = await Client.connect(
        args.url,
        mode=mode,
        room=args.publish,
        sample_rate=rate,
        format=args.format,
        latency=args.latency,
        bandwidth=args.bandwidth,
        want=want,
        **_connect_options(args),
    )
    async with client:
        result = await stream(client, x, chunk_ms=args.chunk_ms, realtime=args.realtime)
    ready = result.ready
    if args.out:
        y = result.audio
        if rate != file_rate:
            y = resample(y, rate, file_rate)[: audio.size]
        sf.write(str(args.out), y, file_rate)
        print(f"{args.file} -> {args.out}: {y.size} samples at {file_rate} Hz", file=sys.stderr)
    if args.codes_out:
        _write_codes(args.codes_out, result.codes, ready, audio.size, file_rate, x.size, rate)
        print(
            f"{args.file} -> {args.codes_out}: {result.codes.shape[0]} x {result.codes.shape[1]} codes",
            file=sys.stderr,
        )
    print(
        format_report(
            result.latency,
            algorithmic_ms=ready["algorithmic_latency_ms"],
            chunk_ms=args.chunk_ms,
            realtime=args.realtime,
            n_chunks=len(result.latency.processing_ms),
            dropped=int(result.done.get("dropped", 0)),
            extra=f"{mode} at {rate} Hz, preset {ready['latency']}, {ready['bandwidth']:g} kbps, model {ready['model']}",
        )
    )
    for err in result.errors:
        print(f"server error: {err['code']}: {err['message']}", file=sys.stderr)
    return 1 if result.errors else 0


def _write_codes(
    path: Path, codes, ready: dict, n_orig: int, orig_rate: int, n_sent: int, sent_rate: int
) -> None:
    from xcodec_stream.model.codes_file import CodesFile

    codec_rate = int(ready["codec_sample_rate"])
    CodesFile(
        codes=codes,
        frame_rate=int(ready["frame_rate"]),
        sample_rate=codec_rate,
        hop_length=int(ready["frame_size"]),
        model_id=str(ready["model"]),
        num_samples=-(-n_sent * codec_rate // sent_rate),
        original_sample_rate=orig_rate,
        original_num_samples=n_orig,
        codebook_size=int(ready["codebook_size"]),
        bandwidth=float(ready["bandwidth"]),
    ).save(path)


async def _mic(args: argparse.Namespace) -> int:
    from xcodec_stream.clients.mic import run_mic

    report = await run_mic(
        args.url,
        mode="publish" if args.publish else "loopback",
        room=args.publish,
        input_device=_device(args.input_device),
        output_device=_device(args.output_device),
        device_rate=args.device_rate,
        chunk_ms=args.chunk_ms,
        jitter_ms=args.jitter_ms,
        seconds=args.seconds,
        latency=args.latency,
        bandwidth=args.bandwidth,
        **_connect_options(args),
    )
    print(report.text)
    return 0


async def _listen(args: argparse.Namespace) -> int:
    import soundfile as sf

    from xcodec_stream.clients.client import Client, listen
    from xcodec_stream.clients.mic import play_room

    if not (args.out or args.codes_out):
        done = await play_room(
            args.url,
            args.listen,
            output_device=_device(args.output_device),
            device_rate=args.device_rate,
            jitter_ms=args.jitter_ms,
            **_connect_options(args),
        )
        print(f"room {args.listen}: {done}", file=sys.stderr)
        return 0
    want = (["audio"] if args.out else []) + (["codes"] if args.codes_out else [])
    rate = args.device_rate or 16000
    client = await Client.connect(
        args.url,
        mode="listen",
        room=args.listen,
        sample_rate=rate,
        want=want,
        format=args.format,
        **_connect_options(args),
    )
    async with client:
        result = await listen(client)
    if args.out:
        sf.write(str(args.out), result.audio, rate)
        print(f"room {args.listen} -> {args.out}: {result.audio.size} samples at {rate} Hz", file=sys.stderr)
    if args.codes_out:
        n16 = result.codes.shape[1] * int(client.ready["frame_size"])
        _write_codes(
            args.codes_out,
            result.codes,
            client.ready,
            n16,
            int(client.ready["codec_sample_rate"]),
            n16,
            16000,
        )
        print(f"room {args.listen} -> {args.codes_out}: {result.codes.shape} codes", file=sys.stderr)
    print(
        f"room ended: {result.done.get('reason')}, dropped {result.done.get('dropped', 0)} messages",
        file=sys.stderr,
    )
    return 0
