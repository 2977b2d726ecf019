"""Training curves (PNG) from a run's training-log.jsonl: the reconstruction losses, the adversarial
terms and codebook usage against the step, with the phase starts (codebooks seeded, discriminators on)."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _smooth(values: list[float], width: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= width:
            acc -= values[i - width]
        out.append(acc / min(i + 1, width))
    return out


def plot_curves(log: list[dict], path: Path, title: str, vq_start: int, gan_start: int) -> None:
    from xcodec_stream.bench.report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    width = max(1, len(log) // 100)  # a moving average over 1 % of the run: the trend, not the noise
    panels = (
        (axes[0], (("mel", "multi-scale mel L1"), ("wave", "waveform L1 x10"))),
        (axes[1], (("adv", "adversarial (G)"), ("feat", "feature matching"), ("disc", "discriminator"))),
        (axes[2], (("usage", "codebook usage per batch"), ("commit", "commitment"))),
    )
    for ax, series in panels:
        for key, label in series:
            points = [(r["step"], r[key] * (10 if key == "wave" else 1)) for r in log if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, _smooth(list(values), width), label=label, linewidth=1.2)
        for x in (vq_start, gan_start):  # codebooks seeded, discriminators on
            ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    save_figure(fig, path, title, fontsize=10, dpi=80)
