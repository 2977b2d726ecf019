"""`xcodec-stream client` and `serve` from the command line (in-process daemon with the fake codec)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from fakes import FakeModel
from serving_helpers import running_server, speech

from xcodec_stream.cli import serve as serve_cli
from xcodec_stream.cli.main import main
from xcodec_stream.model.codes_file import load_codes
from xcodec_stream.streaming.resample import resample

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("rate", [16000, 44100])
async def test_client_file_loopback_and_codes(tmp_path: Path, rate: int, capsys) -> None:
    x = resample(speech(seconds=1.0), 16000, rate)
    wav, out, codes = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "codes.npz"
    sf.write(wav, x, rate, subtype="FLOAT")
    async with running_server(FakeModel()) as srv:
        argv = [
            "client",
            "--url",
            srv.url,
            "--file",
            str(wav),
            "--out",
            str(out),
            "--codes-out",
            str(codes),
            "--fast",
        ]
        assert await asyncio.to_thread(main, argv) == 0
    y, out_rate = sf.read(out)
    assert out_rate == rate and y.size == x.size
    c = load_codes(codes)
    n16 = -(-x.size * 16000 // rate)
    assert c.codes.shape == (4, -(-n16 // 320))
    assert c.original_num_samples == x.size and c.original_sample_rate == rate and c.model_id == "test-model"
    report = capsys.readouterr().out
    assert "latency report" in report and "algorithmic latency" in report and "p95" in report


async def test_client_token_and_resume_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """--token (or $XCODEC_STREAM_TOKEN) opens an auth-only daemon; --resume is accepted; no token: exit 1."""
    x = speech(seconds=0.4)
    wav, out = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(wav, x, 16000, subtype="FLOAT")
    async with running_server(FakeModel(), auth_tokens=("cli-token",)) as srv:
        argv = ["client", "--url", srv.url, "--file", str(wav), "--out", str(out), "--fast", "--resume"]
        assert await asyncio.to_thread(main, [*argv, "--token", "cli-token"]) == 0
        assert sf.read(out)[0].size == x.size
        monkeypatch.setenv("XCODEC_STREAM_TOKEN", "cli-token")
        assert await asyncio.to_thread(main, argv) == 0
        monkeypatch.delenv("XCODEC_STREAM_TOKEN")
        assert await asyncio.to_thread(main, argv) == 1
    assert "unauthorized" in capsys.readouterr().err


async def test_client_encode_only_and_publish_listen(tmp_path: Path) -> None:
    x = speech(seconds=0.6)
    wav = tmp_path / "in.wav"
    sf.write(wav, x, 16000)
    async with running_server(FakeModel()) as srv:
        argv = [
            "client",
            "--url",
            srv.url,
            "--file",
            str(wav),
            "--codes-out",
            str(tmp_path / "c.npz"),
            "--fast",
        ]
        assert await asyncio.to_thread(main, argv) == 0
        assert load_codes(tmp_path / "c.npz").codes.shape == (4, 30)

        async def pub() -> int:
            await asyncio.sleep(0.5)
            return await asyncio.to_thread(
                main, ["client", "--url", srv.url, "--file", str(wav), "--publish", "r"]
            )

        # the listener needs the room to exist: publish a moment later and retry listening until it does
        task = asyncio.create_task(pub())
        for _ in range(50):
            await asyncio.sleep(0.1)
            if srv.rooms.get("r") is not None:
                break
        argv = [
            "client",
            "--url",
            srv.url,
            "--listen",
            "r",
            "--out",
            str(tmp_path / "room.wav"),
            "--codes-out",
            str(tmp_path / "r.npz"),
        ]
        assert await asyncio.to_thread(main, argv) == 0
        assert await task == 0
    y, _ = sf.read(tmp_path / "room.wav")
    assert 0 < y.size <= x.size


def test_client_flag_errors(capsys) -> None:
    assert main(["client", "--file", "x.wav"]) == 1
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["client", "--file", "x.wav", "--mic"])  # mutually exclusive sources


@pytest.mark.parametrize("builtin", [True, False], ids=["builtin-checkpoint", "no-builtin"])
def test_serve_without_checkpoint_fails_in_one_line_or_falls_back_loudly(
    monkeypatch, caplog, tmp_path, builtin
) -> None:
    from xcodec_stream.model import xcodec

    def fake_load(name, dtype=None, device=None):
        if name.startswith("random:") or name == str(tmp_path):
            return f"model<{name}>"
        raise OSError(f"cannot load model {name!r}: not in the cache and the hub is unreachable")

    monkeypatch.setattr(xcodec.XcodecModel, "from_pretrained", staticmethod(fake_load))
    monkeypatch.setattr(serve_cli, "BUILTIN_CHECKPOINT", tmp_path)
    if builtin:
        (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(RuntimeError) as info:
        serve_cli.load_model("hf-audio/xcodec-hubert-librispeech", "cpu", "float32", fallback_random=False)
    msg = str(info.value)
    assert "\n" not in msg and "--fallback-random" in msg and "random:full" in msg
    with caplog.at_level("WARNING"):
        model, served = serve_cli.load_model(
            "hf-audio/xcodec-hubert-librispeech", "cpu", "float32", fallback_random=True
        )
    if builtin:
        assert (model, served) == (f"model<{tmp_path}>", "checkpoints/speech-small")
        assert "DEMO QUALITY" in caplog.text and "checkpoints/speech-small" in caplog.text
    else:
        assert (model, served) == ("model<random:full>", "random:full")
        assert "WILL NOT BE SPEECH" in caplog.text


def test_top_level_scripts_are_thin() -> None:
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(ROOT / script), "--help"], stdout=subprocess.PIPE, text=True
        )
        for script in ("server.py", "client.py")
    }
    for script, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, script
        assert ("--config" if script == "server.py" else "--url") in out
