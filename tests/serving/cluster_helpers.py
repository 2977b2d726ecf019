"""Real redis-server and nginx for the cluster tests, on free ports under a temp dir (skipped, with the reason,
where the Debian packages are not installed: scripts/system-deps.sh installs them)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from xcodec_stream.serving.cluster.nginx import render_nginx_conf

CLI = Path(sys.executable).with_name("xcodec-stream")


def find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def need(name: str) -> str:
    path = find(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/system-deps.sh installs it: apt-get install {name})")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class RedisServer:
    """redis-server on a free port, no persistence: a restart comes back empty, as after a crash."""

    def __init__(self, workdir: Path) -> None:
        self.binary = need("redis-server")
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--protected-mode", "no"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class Nginx:
    """nginx in front of `daemons` ({node: port}), with the configuration of configs/cluster/."""

    def __init__(self, workdir: Path, daemons: dict[str, int]) -> None:
        self.binary = need("nginx")
        self.dir = workdir / "nginx"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        conf = render_nginx_conf(
            {node: f"127.0.0.1:{port}" for node, port in daemons.items()},
            listen=f"127.0.0.1:{self.port}",
            prefix=str(self.dir),
            user="root" if os.geteuid() == 0 else None,
        )
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        cmd = [self.binary, "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off;"]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=(self.dir / "stderr.log").open("ab")
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            raise AssertionError(f"nginx did not start: {(self.dir / 'stderr.log').read_text()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def healthz(http_url: str) -> dict:
    with urllib.request.urlopen(http_url + "/healthz", timeout=5) as r:
        return json.loads(r.read())


class Daemon:
    """`xcodec-stream serve --model random:tiny --cluster ...` as a process (for kill -9 and SIGTERM)."""

    def __init__(self, workdir: Path, node: str, redis_url: str, port: int | None = None, **options) -> None:
        self.node = node
        self.port = port or free_port()
        self.log = workdir / f"{node}.log"
        config = workdir / f"{node}.toml"
        server = {"max_sessions": 8, "drain_timeout_s": 10.0, **options}
        config.write_text(
            "[server]\n"
            + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in server.items())
            + '[stream]\npresets = ["balanced"]\n[worker]\nbatch_wait_ms = 5.0\ntorch_threads = 1\n'
            + "[cluster]\nttl_s = 1.5\n"
        )
        self.cmd = [str(CLI), "serve", "--config", str(config), "--model", "random:tiny", "--device", "cpu",
                    "--port", str(self.port), "--cluster", redis_url, "--node", node]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=env)
        return self

    def wait_ready(self, timeout: float = 120.0) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if re.search(r"cluster: registered as", self.log.read_text()):
                return self
            time.sleep(0.1)
        raise AssertionError(f"daemon {self.node} did not start:\n{self.log.read_text()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
