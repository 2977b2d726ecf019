"""Config files: every shipped config loads, flags override the file, mistakes are errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from xcodec_stream.serving.config import SECTIONS, ServerConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["default", "gpu", "low-latency"])
def test_shipped_configs_load_and_document_every_option(name: str) -> None:
    path = CONFIGS / f"{name}.toml"
    cfg = load_config(path)
    assert isinstance(cfg, ServerConfig) and cfg.host == "127.0.0.1"
    text = path.read_text()
    lines = text.splitlines()
    for section, keys in SECTIONS.items():
        assert f"[{section}]" in text
        for key in keys:
            i = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
            assert lines[i - 1].startswith("#") or lines[i - 2].startswith("#"), (
                f"{name}: {key} has no comment"
            )


def test_flags_override_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        '[model]\nid = "random:tiny"\n[server]\nport = 9000\nmax_sessions = 3\n[limits]\nmax_backlog_ms = 10\n'
    )
    cfg = load_config(p, {"port": 1234, "model": None})
    assert (cfg.model, cfg.port, cfg.max_sessions, cfg.max_backlog_ms) == ("random:tiny", 1234, 3, 10.0)


@pytest.mark.parametrize(
    "text,match",
    [
        ("[server]\nprot = 1\n", "unknown option server.prot"),
        ("[serve]\nport = 1\n", r"unknown section \[serve\]"),
        ('[server]\nport = "80"\n', "wrong type"),
        ("[server]\nport = 70000\n", "port"),
        ('[stream]\ndefault_latency = "fast"\n', "unknown latency preset"),
        ("[server\n", "invalid TOML"),
        ("[server]\nmax_sessions = 0\n", "max_sessions"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "c.toml"
    p.write_text("[stream]\ndefault_bandwidth = 0\n")
    assert load_config(p).default_bandwidth is None
