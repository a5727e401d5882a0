"""One figure per SKAB subset, one panel per file: the engine's score against the labels."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.skab.data import SUBSETS, SkabFile  # noqa: E402
from benchmarks.skab.evaluate import nines  # noqa: E402
from benchmarks.skab.metrics import TRAIN_ROWS  # noqa: E402
from benchmarks.streaming import EngineOutput  # noqa: E402


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def plot_subsets(
    files: list[SkabFile], outs: list[EngineOutput], threshold: float, title: str, out_dir: Path, stem: str
) -> list[Path]:
    """Write `<stem>-<subset>.png` for each subset; returns the paths."""
    written = []
    level = -np.log10(1.0 - threshold)
    for subset in SUBSETS:
        pairs = [(f, o) for f, o in zip(files, outs) if f.subset == subset]
        fig, axes = plt.subplots(len(pairs), 1, figsize=(7.5, 0.85 * len(pairs) + 0.6), sharex=False, squeeze=False)
        for ax, (f, o) in zip(axes[:, 0], pairs):
            x = np.arange(len(f))
            ax.axvspan(0, TRAIN_ROWS, color="0.85", lw=0)
            for a, b in _spans(f.anomaly == 1):
                ax.axvspan(a, b, color="#f4a6a6", lw=0)
            for a, b in _spans(o.alerting):
                ax.axvspan(a, b, ymin=0.86, ymax=1.0, color="#1f4e9c", lw=0)
            ax.plot(x, nines(o.score), lw=0.5, color="k")
            ax.axhline(level, color="#d62728", lw=0.6, ls="--")
            for c in np.flatnonzero(f.changepoint == 1):
                ax.axvline(c, color="#8c564b", lw=0.6)
            ax.set_xlim(0, len(f))
            ax.set_ylim(0, 7.8)
            ax.set_yticks([0, 3, 6])
            ax.tick_params(labelsize=6, length=2, pad=1)
            ax.text(0.005, 0.62, f.key, transform=ax.transAxes, fontsize=7, fontweight="bold")
        axes[-1, 0].set_xlabel("row (≈ s)", fontsize=7)
        fig.suptitle(
            f"SKAB {subset}: {title}\nblack: score as −log10(1−score), dashed: threshold; red: labelled anomaly; "
            "brown: change points; blue bar: alert open; grey: training part",
            fontsize=7,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.985 - 0.25 / fig.get_figheight()), h_pad=0.15)
        path = out_dir / f"{stem}-{subset}.png"
        fig.savefig(path, dpi=64)
        plt.close(fig)
        written.append(path)
    return written
