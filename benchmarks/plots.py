"""Line charts for the benchmarks' PNGs, drawn from their results.

One helper for every benchmark, so the plots look alike and no script repeats plotting code. Figures
are made without pyplot and written with the Agg renderer (as detector/plotting.py does): plotting
works headless and keeps no global matplotlib state.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation


@dataclass
class Line:
    """One series: points (x, y) in order, a label for the legend, and matplotlib line style keywords."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: dict = field(default_factory=dict)


@dataclass
class Panel:
    """One chart: its lines, axis labels, log axes, and horizontal reference lines as {label: y} (e.g. targets)."""

    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    logx: bool = True
    logy: bool = False
    hlines: dict[str, float] = field(default_factory=dict)


def _si(value: float, _pos: object = None) -> str:
    """Tick label: 1k, 10k, 1M, 4.1G ... instead of 10^3 or 1e6."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


class _SiLogFormatter(LogFormatterSciNotation):
    """matplotlib's choice of which log ticks get a label, written as `_si` writes them."""

    def __call__(self, x: float, pos: object = None) -> str:
        return _si(x) if super().__call__(x, pos) else ""


def _format_axis(axis: object, log: bool) -> None:
    if log:
        axis.set_major_formatter(_SiLogFormatter())
        axis.set_minor_formatter(_SiLogFormatter(labelOnlyBase=False))
    else:
        axis.set_major_formatter(FuncFormatter(_si))


def save_panels(path: str | Path, title: str, panels: list[Panel], note: str = "") -> Path:
    """Draw `panels` side by side into a PNG at `path` (650 px wide per panel, plus 250) and return the path.

    `note` is a second, smaller title line: what ran where (model, machine, date), so a PNG seen on its own
    still says what it shows.
    """
    path = Path(path)
    width = 2.5 + 6.5 * len(panels)
    fig = Figure(figsize=(width, 5.2), dpi=100, layout="constrained")
    fig.suptitle("\n".join([title, *textwrap.wrap(note, int(14 * width))]), fontsize="medium")
    for i, p in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for line in p.lines:
            ax.plot(line.x, line.y, marker="o", markersize=4, label=line.label, **line.style)
        for label, y in p.hlines.items():
            ax.axhline(y, color="grey", linestyle=":", linewidth=1.2, label=label)
        if p.logx:
            ax.set_xscale("log")
        if p.logy:
            ax.set_yscale("log")
        _format_axis(ax.xaxis, p.logx)
        _format_axis(ax.yaxis, p.logy)
        ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
