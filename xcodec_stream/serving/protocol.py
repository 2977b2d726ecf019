"""Wire protocol v1 (pure, no I/O): message schema, msgpack encoding, validation, error and close codes."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .arrays import ArrayError, pack_array, unpack_array
from .modes import WIRE_MODES, Mode

PROTOCOL_VERSION = 1
MODES = WIRE_MODES
FORMATS = {"s16": "<i2", "f32": "<f4"}
WANTS = ("audio", "codes")
LATENCY_PRESETS = ("exact", "balanced", "low")
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000
MAX_SEQ = 2**53  # keeps every counter exact in JavaScript numbers too
ROOM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_CLIENT_NAME = 128
MAX_TOKEN = 128  # resume tokens the server issues are 22 characters; anything this long is not one

# WebSocket close codes the server uses (RFC 6455 section 7.4.1, and 4000-4999 for this application).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_PROTOCOL_ERROR = 1002  # handshake message invalid, unsupported version, message before hello
CLOSE_UNSUPPORTED_DATA = 1003  # text frame
CLOSE_INVALID_PAYLOAD = 1007  # binary frame that is not a msgpack map with a string "type"
CLOSE_POLICY = 1008  # message flood, or a client that stops reading its control messages
CLOSE_TOO_BIG = 1009  # frame over max_message_bytes (sent by the WebSocket layer, no error message first)
CLOSE_INTERNAL = 1011  # server fault
CLOSE_TRY_AGAIN = 1013  # server full (retry later)
CLOSE_IDLE = 4000  # no message within idle_timeout_s
CLOSE_RESUMED_ELSEWHERE = 4001  # this connection's session was resumed on another connection
CLOSE_ROOM_NOT_FOUND = 4004
CLOSE_RESUME_FAILED = 4005  # resume token unknown or expired, or the position cannot be served
CLOSE_ROOM_BUSY = 4009
CLOSE_ROOM_ENDED = 4010  # listener: the room's publisher finished or left (after its `done`)


@dataclass(frozen=True)
class ErrorSpec:
    fatal: bool  # default; any error before `ready` is fatal
    close_code: int  # used when fatal
    meaning: str


# Stable error codes. Clients dispatch on these strings; the text of `message` may change.
ERRORS: dict[str, ErrorSpec] = {
    "bad_message": ErrorSpec(
        True, CLOSE_INVALID_PAYLOAD, "not a msgpack map with a string `type`, or a text frame"
    ),
    "unsupported_version": ErrorSpec(
        True, CLOSE_PROTOCOL_ERROR, "hello.version is not a version this server speaks"
    ),
    "unknown_type": ErrorSpec(
        False, CLOSE_PROTOCOL_ERROR, "a `type` this server does not know; message ignored"
    ),
    "bad_state": ErrorSpec(
        False,
        CLOSE_PROTOCOL_ERROR,
        "message not allowed now (before hello, hello twice, wrong mode, after done)",
    ),
    "bad_field": ErrorSpec(
        False, CLOSE_PROTOCOL_ERROR, "a field is missing, unknown, of the wrong type or out of range"
    ),
    "bad_audio": ErrorSpec(
        False, CLOSE_PROTOCOL_ERROR, "PCM not matching the format, wrong byte length, NaN or Inf"
    ),
    "bad_codes": ErrorSpec(False, CLOSE_PROTOCOL_ERROR, "codes outside the codebook, wrong n_q, wrong shape"),
    "bad_seq": ErrorSpec(
        False, CLOSE_PROTOCOL_ERROR, "sequence number or frame index not the next one expected"
    ),
    "too_large": ErrorSpec(False, CLOSE_PROTOCOL_ERROR, "chunk longer than max_chunk_ms"),
    "rate_limited": ErrorSpec(
        False, CLOSE_POLICY, "input faster than the server accepts; the message was not taken"
    ),
    "too_slow": ErrorSpec(True, CLOSE_POLICY, "the client stopped reading and its control messages piled up"),
    "server_full": ErrorSpec(True, CLOSE_TRY_AGAIN, "max_sessions reached; retry later"),
    "server_busy": ErrorSpec(
        True, CLOSE_TRY_AGAIN, "shed under memory pressure (out of memory); retry later"
    ),
    "idle_timeout": ErrorSpec(True, CLOSE_IDLE, "no message within idle_timeout_s"),
    "room_not_found": ErrorSpec(True, CLOSE_ROOM_NOT_FOUND, "listen: no publisher in that room"),
    "room_busy": ErrorSpec(True, CLOSE_ROOM_BUSY, "publish: the room already has a publisher"),
    "resume_failed": ErrorSpec(
        True, CLOSE_RESUME_FAILED, "resume token unknown or expired, or a position the server cannot serve"
    ),
    "resumed_elsewhere": ErrorSpec(
        True, CLOSE_RESUMED_ELSEWHERE, "the session was resumed on another connection"
    ),
    "internal": ErrorSpec(True, CLOSE_INTERNAL, "server fault while processing this session"),
    "shutting_down": ErrorSpec(True, CLOSE_GOING_AWAY, "the server is stopping"),
    "cluster_unavailable": ErrorSpec(
        True, CLOSE_TRY_AGAIN, "cluster mode: the shared store (Redis) is unreachable; retry later"
    ),
}


class ProtocolError(Exception):
    """A message the server rejects: a stable `code` (key of ERRORS) and a human `message`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        fatal: bool | None = None,
        close_code: int | None = None,
        extra: dict | None = None,
    ) -> None:
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = ERRORS[code].fatal if fatal is None else fatal
        self.close_code = close_code or ERRORS[code].close_code
        self.extra = extra or {}  # more fields of the `error` message (e.g. server_full's `hint`)


# ---------------------------------------------------------------------------------------------- client messages


@dataclass(frozen=True)
class Hello:
    version: int
    mode: Mode | None  # None only when resuming (the session keeps its mode)
    sample_rate: int = 16000
    format: str = "f32"
    bandwidth: float | None = None  # kbps; None = the model's highest
    latency: str | None = None  # preset; None = the server's default
    room: str | None = None
    want: tuple[str, ...] | None = None  # None = the mode's default
    client: str | None = None
    stats_interval_ms: int | None = None
    resume: str | None = None  # resume token from a previous `ready`
    sample: int | None = None  # resuming: audio output received so far (next sample expected)
    frame: int | None = None  # resuming: codes output received so far (next frame expected)


@dataclass(frozen=True)
class Audio:
    seq: int
    pcm: np.ndarray  # 1-D, int16 or float32 as sent


@dataclass(frozen=True)
class Codes:
    frame: int
    codes: np.ndarray  # (n_q, F) uint16


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class StatsRequest:
    pass


@dataclass(frozen=True)
class Ack:
    """Output received by the client: audio before `sample`, codes before `frame` (for resume)."""

    sample: int | None = None
    frame: int | None = None


ClientMessage = Hello | Audio | Codes | Flush | StatsRequest | Ack


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field(msg: dict, name: str, kind: str, *, required: bool = False, default: Any = None) -> Any:
    """Fetch and type-check one field (kind: int, number, str, list, array)."""
    if name not in msg or msg[name] is None:
        if required:
            raise ProtocolError("bad_field", f"{msg['type']}.{name} is required")
        return default
    v = msg[name]
    ok = {
        "int": _int(v),
        "number": (_int(v) or isinstance(v, float)) and math.isfinite(v),
        "str": isinstance(v, str),
        "list": isinstance(v, list),
        "array": isinstance(v, dict),
    }[kind]
    if not ok:
        raise ProtocolError("bad_field", f"{msg['type']}.{name} must be {kind}, got {type(v).__name__}")
    return v


def _only(msg: dict, allowed: set[str]) -> None:
    extra = sorted(str(k) for k in set(msg) - allowed - {"type"})
    if extra:
        raise ProtocolError("bad_field", f"{msg['type']}: unknown field(s) {extra}")


def unpack(data: bytes | bytearray | memoryview | str) -> dict:
    """Frame -> msgpack map with a string `type`; ProtocolError('bad_message') otherwise."""
    if isinstance(data, str):
        raise ProtocolError(
            "bad_message",
            "text frames are not accepted; send binary msgpack frames",
            close_code=CLOSE_UNSUPPORTED_DATA,
        )
    try:
        msg = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, StackError, ...)
        raise ProtocolError("bad_message", f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"frame must be a msgpack map, got {type(msg).__name__}")
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", 'map has no string "type" field')
    return msg


def _no_ext(code: int, data: bytes) -> None:
    raise ProtocolError("bad_message", f"msgpack extension types are not accepted (ext {code})")


def parse_client_message(data: bytes | bytearray | memoryview | str) -> ClientMessage:
    """Decode and validate one client frame. Raises only ProtocolError."""
    msg = unpack(data)
    kind = msg["type"]
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}")
    return parser(msg)


def _position(msg: dict, name: str) -> int | None:
    v = _field(msg, name, "int")
    if v is not None and not 0 <= v < MAX_SEQ:
        raise ProtocolError("bad_field", f"{msg['type']}.{name} must be 0..2^53-1, got {v}")
    return v


def _client_name(msg: dict) -> str | None:
    client = _field(msg, "client", "str")
    if client is not None and len(client) > MAX_CLIENT_NAME:
        raise ProtocolError("bad_field", f"hello.client is limited to {MAX_CLIENT_NAME} characters")
    return client


def _version(msg: dict) -> int:
    version = _field(msg, "version", "int", required=True)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version} not supported; this server speaks {PROTOCOL_VERSION}",
        )
    return version


def _parse_resume(msg: dict) -> Hello:
    """hello {resume: token, sample?, frame?}: the session's parameters are kept, so none may be given."""
    _only(msg, {"version", "resume", "sample", "frame", "client"})
    version = _version(msg)
    token = _field(msg, "resume", "str")
    if not 0 < len(token) <= MAX_TOKEN:
        raise ProtocolError("bad_field", f"hello.resume must be 1..{MAX_TOKEN} characters")
    client = _client_name(msg)
    return Hello(
        version,
        None,
        client=client,
        resume=token,
        sample=_position(msg, "sample"),
        frame=_position(msg, "frame"),
    )


def _parse_hello(msg: dict) -> Hello:
    if msg.get("resume") is not None:
        return _parse_resume(msg)
    _only(
        msg,
        {
            "version",
            "mode",
            "sample_rate",
            "format",
            "bandwidth",
            "latency",
            "room",
            "want",
            "client",
            "stats_interval_ms",
        },
    )
    version = _version(msg)
    mode = _field(msg, "mode", "str", required=True)
    if mode not in MODES:
        raise ProtocolError("bad_field", f"hello.mode must be one of {list(MODES)}, got {mode[:40]!r}")
    mode = Mode(mode)
    rate = _field(msg, "sample_rate", "int", default=16000)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            "bad_field", f"hello.sample_rate must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz, got {rate}"
        )
    fmt = _field(msg, "format", "str", default="f32")
    if fmt not in FORMATS:
        raise ProtocolError("bad_field", f"hello.format must be one of {list(FORMATS)}, got {fmt[:40]!r}")
    bandwidth = _field(msg, "bandwidth", "number")
    latency = _field(msg, "latency", "str")
    if latency is not None and latency not in LATENCY_PRESETS:
        raise ProtocolError(
            "bad_field", f"hello.latency must be one of {list(LATENCY_PRESETS)}, got {latency[:40]!r}"
        )
    room = _field(msg, "room", "str")
    if mode in (Mode.PUBLISH, Mode.LISTEN):
        if room is None:
            raise ProtocolError("bad_field", f"hello.room is required in {mode} mode")
        if not ROOM_NAME.fullmatch(room):
            raise ProtocolError("bad_field", "hello.room must be 1-64 characters of A-Z a-z 0-9 _ . -")
    elif room is not None:
        raise ProtocolError("bad_field", f"hello.room is only for publish/listen, not {mode}")
    want = _field(msg, "want", "list")
    if want is not None:
        if (
            not want
            or len(want) > len(WANTS)
            or any(w not in WANTS for w in want)
            or len(set(want)) != len(want)
        ):
            raise ProtocolError(
                "bad_field", f"hello.want must be a non-empty list of distinct values from {list(WANTS)}"
            )
        if mode in (Mode.ENCODE, Mode.DECODE):
            raise ProtocolError("bad_field", f"hello.want is fixed in {mode} mode; leave it out")
        want = tuple(want)
    client = _client_name(msg)
    stats_ms = _field(msg, "stats_interval_ms", "int")
    if stats_ms is not None and not (stats_ms == 0 or 100 <= stats_ms <= 3_600_000):
        raise ProtocolError("bad_field", "hello.stats_interval_ms must be 0 (off) or 100..3600000")
    return Hello(
        version,
        mode,
        rate,
        fmt,
        None if bandwidth is None else float(bandwidth),
        latency,
        room,
        want,
        client,
        stats_ms,
    )


def _parse_audio(msg: dict) -> Audio:
    _only(msg, {"seq", "pcm"})
    seq = _field(msg, "seq", "int", required=True)
    if not 0 <= seq < MAX_SEQ:
        raise ProtocolError("bad_field", f"audio.seq must be 0..2^53-1, got {seq}")
    try:
        pcm = unpack_array(_field(msg, "pcm", "array", required=True), what="audio.pcm")
    except ArrayError as exc:
        raise ProtocolError("bad_audio", str(exc)) from None
    if pcm.ndim != 1 or pcm.dtype.str not in FORMATS.values():
        raise ProtocolError(
            "bad_audio", f"audio.pcm must be 1-D <i2 or <f4, got {pcm.dtype.str} shape {list(pcm.shape)}"
        )
    if pcm.dtype.kind == "f" and not np.isfinite(pcm).all():
        raise ProtocolError("bad_audio", "audio.pcm holds NaN or Inf samples")
    return Audio(seq, pcm)


def _parse_codes(msg: dict) -> Codes:
    _only(msg, {"frame", "codes"})
    frame = _field(msg, "frame", "int", required=True)
    if not 0 <= frame < MAX_SEQ:
        raise ProtocolError("bad_field", f"codes.frame must be 0..2^53-1, got {frame}")
    try:
        codes = unpack_array(_field(msg, "codes", "array", required=True), what="codes.codes")
    except ArrayError as exc:
        raise ProtocolError("bad_codes", str(exc)) from None
    if codes.ndim != 2 or codes.dtype.str != "<u2":
        raise ProtocolError(
            "bad_codes",
            f"codes.codes must be <u2 of shape (n_q, F), got {codes.dtype.str} {list(codes.shape)}",
        )
    return Codes(frame, codes)


def _parse_flush(msg: dict) -> Flush:
    _only(msg, set())
    return Flush()


def _parse_stats(msg: dict) -> StatsRequest:
    _only(msg, set())
    return StatsRequest()


def _parse_ack(msg: dict) -> Ack:
    _only(msg, {"sample", "frame"})
    sample, frame = _position(msg, "sample"), _position(msg, "frame")
    if sample is None and frame is None:
        raise ProtocolError("bad_field", "ack needs sample and/or frame")
    return Ack(sample, frame)


_PARSERS = {
    "hello": _parse_hello,
    "audio": _parse_audio,
    "codes": _parse_codes,
    "flush": _parse_flush,
    "stats": _parse_stats,
    "ack": _parse_ack,
}


# ---------------------------------------------------------------------------------------------- encoding


def pack(msg: dict) -> bytes:
    """Message map -> frame. numpy arrays become wire arrays; None values are left out."""
    out = {k: (pack_array(v) if isinstance(v, np.ndarray) else v) for k, v in msg.items() if v is not None}
    return msgpack.packb(out, use_bin_type=True)


def error_message(err: ProtocolError) -> dict:
    return {"type": "error", "code": err.code, "message": err.message, "fatal": err.fatal, **err.extra}


# Array-valued fields of server messages, decoded by unpack_server_message for clients.
_SERVER_ARRAYS = {"audio": "pcm", "codes": "codes"}


def unpack_server_message(data: bytes | bytearray | memoryview | str) -> dict:
    """Client side: frame -> map with array fields as numpy arrays. Raises ProtocolError."""
    msg = unpack(data)
    field = _SERVER_ARRAYS.get(msg["type"])
    if field is not None and field in msg:
        try:
            msg[field] = unpack_array(msg[field], what=f"{msg['type']}.{field}")
        except ArrayError as exc:
            raise ProtocolError("bad_message", str(exc)) from None
    return msg


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    """Wire PCM (s16 or f32) -> float32 in [-1, 1) for s16."""
    if pcm.dtype.kind == "i":
        return pcm.astype(np.float32) / 32768.0
    return pcm.astype(np.float32, copy=False)


def float_to_pcm(x: np.ndarray, fmt: str) -> np.ndarray:
    """float32 -> wire PCM of format `fmt` (s16 rounds and saturates)."""
    if fmt == "s16":
        return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    return np.asarray(x, dtype="<f4")
