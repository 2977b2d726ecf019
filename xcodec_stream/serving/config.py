"""Daemon configuration: a dataclass with defaults, loaded from a TOML file (tomllib), then flag overrides."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .protocol import LATENCY_PRESETS

DEFAULT_MODEL = "hf-audio/xcodec-hubert-librispeech"
TOKENS_ENV = "XCODEC_STREAM_TOKENS"  # comma- or space-separated tokens, added to [auth] tokens
LOG_FORMATS = ("text", "json")
# How the worker runs the engines' step (xcodec_stream.streaming.slots): auto = CUDA graphs on a GPU, eager on
# a CPU (inductor takes minutes to compile on a small CPU the first time: ask for "compile" explicitly).
COMPILE_OPTIONS = ("auto", "eager", "compile", "cuda-graphs")


def engines_text(processes: int) -> str:
    """How the codec runs, in words, for `[worker] processes` (the start-up line, benchmark tables)."""
    if not processes:
        return "the engine in a thread of the daemon"
    return f"{processes} engine process{'es' if processes > 1 else ''}"


_SECRETS = {"auth_tokens", "cluster_redis"}  # never printed, not even in error messages


@dataclass(frozen=True)
class ServerConfig:
    """Every option of the daemon. TOML: `[section] key = value`; see configs/default.toml for the meaning."""

    # [model]
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    fallback_random: bool = False
    # [server]
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 16
    max_message_bytes: int = 1 << 20
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    send_buffer_bytes: int = 0
    drain_timeout_s: float = 10.0
    # [stream]
    default_latency: str = "balanced"
    presets: tuple[str, ...] = ("balanced",)
    allowed_presets: tuple[str, ...] = LATENCY_PRESETS
    default_bandwidth: float | None = None
    max_chunk_ms: float = 2000.0
    resampler_zero_crossings: int = 16
    # [limits]
    max_backlog_ms: float = 4000.0
    max_output_queue_ms: float = 2000.0
    max_control_queue: int = 256
    max_messages_per_second: float = 500.0
    message_burst: int = 1000
    flood_close_after: int = 200
    # [worker]
    batch_capacity: int = 0
    max_step_ms: float = 500.0
    max_chunks_per_step: int = 0
    batch_wait_ms: float = 0.0
    torch_threads: int = 0
    compile: str = "eager"
    # 0: the worker is a thread of the daemon; N: N engine processes (serving/worker/pool.py)
    engine_processes: int = 0
    # [auth]
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    # [tls]
    tls_cert: str = ""
    tls_key: str = ""
    # [resume]
    resume_grace_s: float = 10.0
    resume_max_unacked_ms: float = 5000.0
    # [metrics]
    metrics_enabled: bool = True
    metrics_public: bool = False
    # [http]
    allowed_origins: tuple[str, ...] = ()
    # [log]
    log_level: str = "info"
    log_format: str = "text"
    # [cluster] (empty redis = one daemon on its own, rooms in memory)
    cluster_redis: str = field(default="", repr=False)  # the URL may hold a password
    cluster_node: str = ""
    cluster_url: str = ""
    cluster_prefix: str = "xcs:"
    cluster_ttl_s: float = 3.0
    cluster_stream_len: int = 3000

    @property
    def capacity(self) -> int:
        """Slots per encoder/decoder instance."""
        return self.batch_capacity or self.max_sessions

    def validate(self) -> ServerConfig:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if self.batch_capacity and self.batch_capacity < self.max_sessions:
            raise ValueError("batch_capacity must be 0 (= max_sessions) or >= max_sessions")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        bad = [
            p
            for p in (*self.presets, self.default_latency, *self.allowed_presets)
            if p not in LATENCY_PRESETS
        ]
        if bad:
            raise ValueError(f"unknown latency preset(s) {bad}; known: {list(LATENCY_PRESETS)}")
        if self.default_latency not in self.allowed_presets:
            raise ValueError(f"default_latency {self.default_latency!r} is not in allowed_presets")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.engine_processes < 0:
            raise ValueError(f"[worker] processes must be >= 0, got {self.engine_processes}")
        if self.compile not in COMPILE_OPTIONS:
            raise ValueError(f"[worker] compile must be one of {list(COMPILE_OPTIONS)}, got {self.compile!r}")
        if self.max_message_bytes < 4096:
            raise ValueError("max_message_bytes must be >= 4096")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("[tls] needs both cert and key (or neither)")
        if any(not t or re.search(r"\s", t) for t in self.auth_tokens):
            raise ValueError("[auth] tokens must be non-empty and contain no whitespace")
        if self.resume_grace_s < 0 or self.drain_timeout_s < 0:
            raise ValueError("resume grace_s and drain_timeout_s must be >= 0")
        if self.cluster_redis and not self.cluster_redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("[cluster] redis must be a redis://HOST:PORT/DB (or rediss://, unix://) URL")
        if self.cluster_node and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", self.cluster_node):
            raise ValueError("[cluster] node must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if self.cluster_ttl_s < 0.5 or self.cluster_stream_len < 10:
            raise ValueError("[cluster] ttl_s must be >= 0.5 and stream_len >= 10")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {list(LOG_FORMATS)}, got {self.log_format!r}")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens)

    @property
    def resume_enabled(self) -> bool:
        return self.resume_grace_s > 0

    @property
    def clustered(self) -> bool:
        return bool(self.cluster_redis)


# TOML section -> {toml key: dataclass field}
SECTIONS: dict[str, dict[str, str]] = {
    "model": {"id": "model", "device": "device", "dtype": "dtype", "fallback_random": "fallback_random"},
    "server": {
        k: k
        for k in (
            "host",
            "port",
            "max_sessions",
            "max_message_bytes",
            "handshake_timeout_s",
            "idle_timeout_s",
            "ping_interval_s",
            "ping_timeout_s",
            "send_buffer_bytes",
            "drain_timeout_s",
        )
    },
    "stream": {
        k: k
        for k in (
            "default_latency",
            "presets",
            "allowed_presets",
            "default_bandwidth",
            "max_chunk_ms",
            "resampler_zero_crossings",
        )
    },
    "limits": {
        k: k
        for k in (
            "max_backlog_ms",
            "max_output_queue_ms",
            "max_control_queue",
            "max_messages_per_second",
            "message_burst",
            "flood_close_after",
        )
    },
    "worker": {
        k: k
        for k in (
            "batch_capacity",
            "max_step_ms",
            "max_chunks_per_step",
            "batch_wait_ms",
            "torch_threads",
            "compile",
        )
    }
    | {"processes": "engine_processes"},
    "auth": {"tokens": "auth_tokens"},
    "tls": {"cert": "tls_cert", "key": "tls_key"},
    "resume": {"grace_s": "resume_grace_s", "max_unacked_ms": "resume_max_unacked_ms"},
    "metrics": {"enabled": "metrics_enabled", "public": "metrics_public"},
    "http": {"allowed_origins": "allowed_origins"},
    "log": {"level": "log_level", "format": "log_format"},
    "cluster": {
        "redis": "cluster_redis",
        "node": "cluster_node",
        "url": "cluster_url",
        "prefix": "cluster_prefix",
        "ttl_s": "cluster_ttl_s",
        "stream_len": "cluster_stream_len",
    },
}
# TOML cannot say None: these options take 0 or "" to mean "not set".
_NONE_IF_FALSY = {"default_bandwidth", "ping_interval_s", "ping_timeout_s"}


def _coerce(name: str, value: Any) -> Any:
    """Check a value against the dataclass field's type (TOML int for float fields is fine)."""
    default = next(f for f in dataclasses.fields(ServerConfig) if f.name == name).default
    if name in _NONE_IF_FALSY and not value:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float) or name in _NONE_IF_FALSY:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = True
    if not ok:
        shown = "<hidden>" if name in _SECRETS else repr(value)
        raise ValueError(f"option {name} has the wrong type: {shown}")
    return value


def tokens_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Tokens in XCODEC_STREAM_TOKENS (comma or whitespace separated)."""
    raw = (os.environ if environ is None else environ).get(TOKENS_ENV, "")
    return tuple(t for t in re.split(r"[,\s]+", raw) if t)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ServerConfig:
    """Defaults <- TOML file (if given) <- overrides (flags; None values are ignored). Tokens in the
    environment (XCODEC_STREAM_TOKENS) are added to the file's."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from None
        for section, table in data.items():
            if section not in SECTIONS or not isinstance(table, dict):
                raise ValueError(f"{path}: unknown section [{section}]; known: {sorted(SECTIONS)}")
            for key, value in table.items():
                if key not in SECTIONS[section]:
                    raise ValueError(
                        f"{path}: unknown option {section}.{key}; known: {sorted(SECTIONS[section])}"
                    )
                name = SECTIONS[section][key]
                try:
                    values[name] = _coerce(name, value)
                except ValueError as exc:
                    raise ValueError(f"{path}: [{section}] {exc}") from None
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    env_tokens = tokens_from_env()
    if env_tokens:
        values["auth_tokens"] = (*values.get("auth_tokens", ()), *env_tokens)
    return ServerConfig(**values).validate()
