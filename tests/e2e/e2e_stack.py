"""Helpers of the end-to-end tests: the speech clip, a real daemon on an ephemeral port, alignment, a reference client."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from xcodec_stream.streaming.resample import resample

DATA = Path(__file__).resolve().parents[1] / "data"
CLIP = DATA / "arctic_a0007.wav"  # 16 kHz mono speech, 4.0 s (CMU ARCTIC, see tests/data/SOURCES.md)
LEAD_SILENCE_S = 0.5  # the fake microphone loses what plays before the page listens: pad the start
# The built-in checkpoint: speech goes out and speech comes back (small enough for real time on 2 cores).
# Relative to the repository root, where the daemon runs: the page shows it, and docs/browser.png too.
ROOT = Path(__file__).resolve().parents[2]
# XCS_E2E_MODEL=random:tiny runs the suite on another model, for latency figures (docs/BENCHMARKS.md): the
# speech checks (STOI floors) then only print, random weights making no speech.
MODEL = os.environ.get("XCS_E2E_MODEL", "checkpoints/speech-small")
SPEECH = not MODEL.startswith("random:")


def model_ref() -> str | Path:
    """What `from_pretrained` takes for MODEL: a random model's name, or the folder under the repository."""
    return MODEL if MODEL.startswith("random:") else ROOT / MODEL


def padded_clip(rate: int, *, lead_s: float = LEAD_SILENCE_S, tail_s: float = 0.0) -> np.ndarray:
    """The test clip as float32 at `rate`, with `lead_s` of silence before and `tail_s` after."""
    x, sr = sf.read(CLIP, dtype="float32")
    x = np.concatenate([np.zeros(int(sr * lead_s), np.float32), x, np.zeros(int(sr * tail_s), np.float32)])
    return x if rate == sr else resample(x, sr, rate)


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    sf.write(path, x, rate, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class Alignment:
    lag: int  # b is delayed by `lag` samples relative to a (b[n + lag] ~ a[n])
    r: float  # normalised correlation over the overlap, after alignment
    gain: float  # least-squares gain of b over a on the overlap
    overlap: int


def align(a: np.ndarray, b: np.ndarray, *, max_lag: int | None = None) -> Alignment:
    """Finds the lag of `b` against `a` at the peak of their cross-correlation (FFT), and the correlation there."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n = len(a) + len(b) - 1
    size = 1 << (n - 1).bit_length()
    c = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([np.arange(0, len(b)), np.arange(-(len(a) - 1), 0)])
    c = np.concatenate([c[: len(b)], c[size - (len(a) - 1) :]])
    if max_lag is not None:
        c = np.where(np.abs(lags) <= max_lag, c, -np.inf)
    lag = int(lags[int(np.argmax(c))])
    if lag >= 0:
        x, y = a, b[lag:]
    else:
        x, y = a[-lag:], b
    m = min(len(x), len(y))
    x, y = x[:m], y[:m]
    den = float(np.sqrt(np.dot(x, x) * np.dot(y, y)))
    r = float(np.dot(x, y) / den) if den > 0 else 0.0
    gain = float(np.dot(x, y) / np.dot(x, x)) if np.dot(x, x) > 0 else 0.0
    return Alignment(lag, r, gain, m)


@dataclass(frozen=True)
class WindowMatch:
    start: int  # first sample of the window in `rec`
    lag: int  # rec[start + j] ~ ref[start + j - lag]
    r: float


def windowed_alignment(
    ref: np.ndarray, rec: np.ndarray, *, win: int, min_lag: int, max_lag: int, min_rms: float = 1e-4
) -> list[WindowMatch]:
    """Aligns each non-silent window of `rec` on its own against `ref` (lags in [min_lag, max_lag]).

    A player's jitter buffer inserts silence on an underrun and skips audio on overflow, so a recording is
    `ref` cut into pieces at different delays: one global lag cannot describe it, one per window can.
    """
    ref = np.asarray(ref, np.float64)
    rec = np.asarray(rec, np.float64)
    span = win + max_lag - min_lag
    size = 1 << (span + win - 1).bit_length()
    out = []
    for s in range(0, len(rec) - win + 1, win):
        w = rec[s : s + win]
        if np.sqrt(np.mean(w * w)) < min_rms:
            continue
        lo = s - max_lag  # ref[lo : lo + span] covers every candidate lag
        seg = np.zeros(span)
        a, b = max(lo, 0), min(lo + span, len(ref))
        if b > a:
            seg[a - lo : b - lo] = ref[a:b]
        # c[i] = sum_j w[j] * seg[i + j], for i in 0 .. span - win
        c = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(w, size)), size)[: span - win + 1]
        e = np.concatenate([[0.0], np.cumsum(seg * seg)])
        energy = e[win:] - e[: len(e) - win]
        r = c / np.sqrt(np.maximum(energy, 1e-20) * np.dot(w, w))
        i = int(np.argmax(r))
        out.append(WindowMatch(s, s - (lo + i), float(r[i])))
    return out


# ---------------------------------------------------------------------------------------------- daemon


@dataclass
class Daemon:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


LISTEN_RE = re.compile(r"serving ws://[^\s/]+:(\d+)")  # the daemon's start-up log line


def start_daemon(tmp_path: Path, *extra: str, timeout_s: float = 60.0) -> Daemon:
    """`xcodec-stream serve` on an ephemeral port with the built-in checkpoint; waits until it listens."""
    log = tmp_path / "daemon.log"
    cmd = [sys.executable, "-m", "xcodec_stream.cli.main", "serve", "--model", MODEL, "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--processes", "2", *extra]  # two engine processes, as configs/default.toml
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:  # the child keeps its own handle; a file never blocks it as a pipe could
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while True:
        m = LISTEN_RE.search(log.read_text(errors="replace"))
        if m:
            return Daemon(proc, int(m.group(1)), log)
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"daemon did not start: {' '.join(cmd)}\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def stop_daemon(d: Daemon) -> None:
    if d.proc.poll() is None:
        d.proc.send_signal(signal.SIGINT)
        try:
            d.proc.wait(10)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()


# ---------------------------------------------------------------------------------------------- reference client


async def reference_loopback(
    url: str, pcm: np.ndarray, rate: int, *, fmt: str = "s16", chunk_ms: float = 50.0, **hello: object
) -> tuple[np.ndarray, dict, dict]:
    """What the daemon returns for `pcm` (float32 at `rate`) in loopback mode, streamed by the Python client
    as fast as the server takes it, in other chunks than the page's. Returns (audio, ready, done)."""
    from xcodec_stream.clients.client import Client, stream

    client = await Client.connect(url, mode="loopback", sample_rate=rate, format=fmt, want=["audio"], **hello)
    async with client:
        res = await stream(client, pcm, chunk_ms=chunk_ms)
    assert not res.errors, res.errors
    return res.audio, res.ready, res.done


# ---------------------------------------------------------------------------------------------- PulseAudio bus

# One null sink as a stereo bus (one clock): left = what the microphone hears, right = what the speaker plays.
# `norewinds=1` keeps the sink at a fixed latency (without it the idle sink renders seconds ahead and new
# clients stall or slip). See the recipe notes in docs/E2E.md.
BUS_PA = """\
load-module module-native-protocol-unix auth-anonymous=1
load-module module-null-sink sink_name=bus rate={rate} channels=2 channel_map=front-left,front-right norewinds=1
load-module module-remap-sink sink_name=micfeed master=bus channels=1 channel_map=mono master_channel_map=front-left remix=no
load-module module-remap-sink sink_name=spk master=bus channels=1 channel_map=mono master_channel_map=front-right remix=no
load-module module-remap-source source_name=mic master=bus.monitor channels=1 channel_map=mono master_channel_map=front-left remix=no
set-default-sink spk
set-default-source mic
"""
PULSE_TOOLS = ("pulseaudio", "pactl", "paplay", "parecord")


@dataclass
class PulseBus:
    proc: subprocess.Popen
    runtime: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process on this bus: its default devices are the bus's mic and speaker."""
        return {
            **os.environ,
            "PULSE_RUNTIME_PATH": str(self.runtime),
            "PULSE_SINK": "spk",
            "PULSE_SOURCE": "mic",
        }


def pulse_missing() -> str | None:
    """Why a PulseAudio bus cannot be had here, or None."""
    import shutil

    missing = [t for t in PULSE_TOOLS if shutil.which(t) is None]
    if missing:
        return f"PulseAudio tools not installed: {', '.join(missing)} (Debian: pulseaudio pulseaudio-utils)"
    import ctypes.util

    if ctypes.util.find_library("portaudio") is None:
        return "PortAudio not installed (Debian: libportaudio2), sounddevice cannot open devices"
    return None


def start_pulse_bus(tmp_path: Path, rate: int, *, timeout_s: float = 10.0) -> PulseBus:
    """A private user-mode PulseAudio daemon with the bus loaded; RuntimeError with its log if it cannot start."""
    import tempfile

    script = tmp_path / "bus.pa"
    script.write_text(BUS_PA.format(rate=rate))
    # The socket path must stay short (unix socket limit), so not under tmp_path.
    runtime = Path(tempfile.mkdtemp(prefix="pa."))
    log = tmp_path / "pulse.log"
    env = {**os.environ, "PULSE_RUNTIME_PATH": str(runtime)}
    cmd = ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit", "-n", "-F", str(script)]
    cmd += ["--log-target=stderr"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    bus = PulseBus(proc, runtime, log)
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pulse_bus(bus)
            raise RuntimeError(f"PulseAudio did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return bus


def stop_pulse_bus(bus: PulseBus) -> None:
    import shutil

    if bus.proc.poll() is None:
        bus.proc.terminate()
        try:
            bus.proc.wait(5)
        except subprocess.TimeoutExpired:
            bus.proc.kill()
            bus.proc.wait()
    shutil.rmtree(bus.runtime, ignore_errors=True)
