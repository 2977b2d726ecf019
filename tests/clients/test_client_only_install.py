"""A client-only install (`pip install 'xcodec-stream[client]'`) brings no torch, and its CLI works.

The packaging is read from pyproject.toml; "without torch" is a subprocess whose imports of the server
extra's packages fail as they would where they are not installed. The pip resolution runs where an index
answers and skips with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import soundfile as sf
from fakes import FakeModel
from serving_helpers import running_server, speech

from xcodec_stream.cli.main import SERVER_EXTRA_MODULES

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "torchaudio", "transformers", "safetensors", "huggingface_hub"}

# Prepended to a subprocess's code: importing the server extra (or transformers) fails as if not installed.
WITHOUT_SERVER_EXTRA = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {sorted(SERVER_EXTRA_MODULES | HEAVY)!r}
    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, _NotInstalled())
    """
)


def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement string ("prometheus-client>=0.20" -> "prometheus_client")."""
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("-", "_")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_pyproject_base_and_client_extra_bring_no_torch() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    client = {_name(r) for r in project["dependencies"] + extras["client"]}
    assert client and not client & HEAVY, client & HEAVY
    server = {_name(r) for r in extras["server"]}
    assert {"torch", "torchaudio"} <= server
    # the CLI's list of what makes a subcommand a server one is the server extra itself
    assert server == SERVER_EXTRA_MODULES
    assert "xcodec_stream[server]" in {r.lower().replace("-", "_") for r in extras["test"]}


def _run_without_server_extra(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER_EXTRA + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_client_library_and_cli_without_the_server_extra() -> None:
    code = """
        import contextlib, io, sys
        from xcodec_stream.clients import Client, listen, stream
        from xcodec_stream.cli.main import SUBCOMMANDS, build_parser, main

        # what `client --file/--mic/--listen` import when they run
        import xcodec_stream.cli.audio_file, xcodec_stream.clients.mic, xcodec_stream.model.codes_file
        import xcodec_stream.streaming.resample

        def run(argv):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as exc:
                    rc = exc.code
            return rc, out.getvalue(), err.getvalue()

        build_parser()
        rc, out, _ = run(["--help"])
        assert rc == 0 and all(c in out for c in SUBCOMMANDS), out
        rc, out, _ = run(["client", "--help"])
        assert rc == 0 and "--file" in out and "--listen" in out, out
        hint = "pip install 'xcodec-stream[server]'"
        # serve imports torch when it runs; encode when its module is imported (a stub is registered)
        for argv in (
            ["serve", "--port", "0"],
            ["encode", "in.wav", "out.npz", "--bandwidth", "2"],
            ["eval", "--quality"],  # the module is cli/evaluate.py: the stub takes the command's name
        ):
            rc, _, err = run(argv)
            assert rc == 1 and f"xcodec-stream {argv[0]} needs the server extra: {hint}" in err, (argv, rc, err)
        rc, out, _ = run(["encode", "--help"])
        assert rc == 0 and "server extra" in out, out
        assert "torch" not in sys.modules
        print("ok")
    """
    done = _run_without_server_extra(code)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


async def test_client_cli_file_loopback_without_the_server_extra(tmp_path: Path) -> None:
    """`xcodec-stream client --file` end to end, in a process that cannot import torch (daemon: this one)."""
    wav, out, codes = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "codes.npz"
    x = speech(seconds=0.5)
    sf.write(wav, x, 16000, subtype="FLOAT")
    code = """
        import sys
        from xcodec_stream.cli.main import main
        rc = main(sys.argv[1:])
        assert "torch" not in sys.modules
        sys.exit(rc)
    """
    async with running_server(FakeModel()) as srv:
        argv = ["client", "--url", srv.url, "--file", str(wav), "--out", str(out), "--codes-out", str(codes)]
        done = await asyncio.to_thread(_run_without_server_extra, code, *argv, "--fast")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sf.read(out)[0].size == x.size and codes.stat().st_size > 0


def test_pip_resolves_the_client_extra_without_torch(tmp_path: Path) -> None:
    """The real resolver on the real metadata: what `pip install '<repo>[client]'` would install."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--disable-pip-version-check", "--report", str(report), f"{ROOT}[client]"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.skip("pip install --dry-run took over 120 s (slow or unreachable package index)")
    if done.returncode != 0 or not report.is_file():
        pytest.skip(f"pip could not resolve (no package index reachable?): {done.stderr.strip()[-300:]}")
    names = {
        i["metadata"]["name"].lower().replace("-", "_") for i in json.loads(report.read_text())["install"]
    }
    assert "xcodec_stream" in names and "websockets" in names
    assert not names & (HEAVY | SERVER_EXTRA_MODULES), sorted(names)
