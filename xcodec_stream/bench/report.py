"""Shared reporting for benchmarks: machine description and section-wise updates of docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

import torch


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU needs nothing): before reading a
    clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


HEADER = (
    "# Benchmarks\n\nEvery table is written by `xcodec-stream bench ...`; re-run the command to refresh it.\n"
)


def machine() -> str:
    """One line naming the hardware and software a number was measured on."""
    dev = f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu()}, {os.cpu_count()} CPUs visible, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {dev}, Python {platform.python_version()}"
    )


def cpu() -> str:
    """The CPU's model name and the instruction sets that change our numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((set(x.split(":", 1)[1].split()) for x in info if x.startswith("flags")), set())
        # the instruction sets that change our numbers (fp32 matmul speed, native bf16)
        isa = [n for f, n in (("avx512f", "AVX-512"), ("amx_bf16", "AMX-BF16")) if f in flags]
        cpu += f" ({', '.join(isa) if isa else 'AVX2' if 'avx2' in flags else 'no AVX2'})"
    except OSError:
        pass
    return cpu


def today() -> str:
    return _dt.date.today().isoformat()


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path: str | Path = "docs/BENCHMARKS.md") -> Path:
    """Replace (or append) the section delimited by markers for `name`, leaving the other sections alone."""
    return replace_between(path, f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->", body, HEADER)


def replace_between(path: str | Path, begin: str, end: str, body: str, header: str) -> Path:
    """Put `body` between the markers `begin` and `end` of the file (appended with them if missing; the file
    created with `header` if missing); the rest of the file stays as it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else header
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (plots are written, never shown), or a clear error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the plot needs matplotlib: pip install matplotlib (or the `test` extra)") from exc
    return plt


def proxy_note(model_id: str) -> str:
    """The title suffix that says a figure's numbers come from random weights."""
    return " (random-weight proxy)" if model_id.startswith("random:") else ""


def save_figure(
    fig, path: Path, title: str, *, fontsize: float | None = None, dpi: int = 110, bottom: float = 0.0
) -> Path:
    """The last steps of every plot here: title, tight layout (above `bottom`, a fraction of the figure kept
    for a figure-wide legend), the PNG written (its folder made), the figure freed (pyplot keeps every open
    figure otherwise)."""
    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
