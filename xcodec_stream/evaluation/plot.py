"""PNG of PESQ-WB and STOI against bitrate: one line per codec mode, Opus as its own line."""

from __future__ import annotations

from pathlib import Path

from xcodec_stream.evaluation.quality import OPUS, Quality


def plot(quality: Quality, path: Path, model_id: str) -> None:
    from xcodec_stream.bench.report import proxy_note, pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, label in zip(axes, ("pesq", "stoi"), ("PESQ-WB (MOS-LQO)", "STOI"), strict=True):
        for mode in quality.modes:
            points = [(k, quality.score(mode, k)) for k in quality.bandwidths]
            ax.plot(
                [k for k, _ in points],
                [s.mean_pesq if metric == "pesq" else s.mean_stoi for _, s in points],
                marker="o",
                label=mode,
            )
        opus = [quality.score(OPUS, k) for k in quality.opus_shown]
        if opus:
            # at the rate Opus really sent: below ~6 kbps it sends more than asked
            ax.plot(
                [s.mean_sent_kbps for s in opus],
                [s.mean_pesq if metric == "pesq" else s.mean_stoi for s in opus],
                marker="s",
                color="black",
                linestyle="--",
                label="Opus (kbps sent)",
            )
        ax.set(xlabel="bitrate (kbps)", ylabel=label, title=label.split(" ")[0])
        ax.grid(alpha=0.3)
    axes[0].set_ylim(1.0, 4.7)
    axes[1].set_ylim(top=1.0)
    axes[1].legend(loc="lower right")
    save_figure(fig, path, f"Speech quality against bitrate, {model_id}{proxy_note(model_id)}")
