"""A picture of a replay: values and forecasts, the calibrated score, alerts and labels.

One panel group per sensor (at most `MAX_SENSORS`, those with the most alerts
first): each channel's values with the engine's forecast overlaid, then the score
on [0, 1] with the threshold. Alert episodes are shaded red on every panel of
the sensor; labelled anomalies (e.g. SKAB's `anomaly` column) are shaded blue
on the score panel, so misses and false alarms are visible at a glance.

Figures are made without pyplot and written with the Agg renderer, so plotting
works headless and leaves the caller's matplotlib backend alone.

Long series are drawn as min/max envelopes of a few thousand buckets, which keeps
spikes visible and files small however many readings there are.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from detector.replay import ReplayResult
from detector.readings.reasons import SCORED

MAX_SENSORS = 6
MAX_AXES = 16
"""Value panels in all; beyond it each sensor's channels share one panel, standardised."""
MAX_POINTS = 4000
"""Points per drawn line; longer series become min/max envelopes."""

ALERT_COLOUR = "#d62728"
LABEL_COLOUR = "#1f77b4"


def plot_replay(result: ReplayResult, path: str | Path) -> Path:
    """Draw `result` into a PNG at `path` (1600 px wide, 1000 px or more high) and return the path."""
    path = Path(path)
    sensors = _pick_sensors(result)
    channels = len(result.channel_names)
    separate = len(sensors) * channels <= MAX_AXES
    value_axes = channels if separate else 1
    ratios = [1.0] * value_axes + [0.9]
    height = max(10.0, len(sensors) * (0.9 * len(ratios) + 0.5) + 1.5)
    fig = Figure(figsize=(16, height), dpi=100)  # no pyplot: no global state, no GUI backend needed (Agg)
    outer = fig.add_gridspec(len(sensors), 1, hspace=0.45 if len(sensors) > 1 else 0.0,
                             left=0.05, right=0.98, top=1 - 1.45 / height, bottom=0.55 / height)
    episodes = result.episodes()
    all_sensors = result.sensors()
    first: Axes | None = None
    axes: list[Axes] = []

    for k, sensor in enumerate(sensors):
        inner = outer[k].subgridspec(len(ratios), 1, height_ratios=ratios, hspace=0.08)
        group = []
        for j in range(len(ratios)):
            ax = fig.add_subplot(inner[j], sharex=first)
            first = first or ax
            group.append(ax)
        axes += group
        rows = result.rows_of(sensor)
        times = _to_datetime(result.ts[rows])
        if separate:
            for c, ax in enumerate(group[:-1]):
                _plot_channel(ax, times, result.values[rows, c], result.expected[rows, c], result.channel_names[c])
        else:
            _plot_standardised(group[0], times, result.values[rows], result.expected[rows], result.channel_names)
        score_ax = group[-1]
        ok = result.status[rows] == SCORED
        _line(score_ax, times[ok], result.score[rows][ok], color="black", lw=0.6, label="score")
        score_ax.axhline(result.config.threshold, color=ALERT_COLOUR, ls="--", lw=0.9,
                         label=f"threshold {result.config.threshold}")
        score_ax.set_ylim(0, 1.02)
        score_ax.set_ylabel("score", fontsize=9)
        warm = times[ok][: result.config.warmup]
        if warm.size:
            score_ax.axvspan(warm[0], warm[-1], color="#999999", alpha=0.25, lw=0, label="warm-up (not flagged)")
        _shade_labels(score_ax, times, {name: col[rows] for name, col in result.labels.items()})
        mine = [e for e in episodes if e.sensor_id == sensor]
        for episode in mine:
            start = _to_datetime(np.array([episode.start]))[0]
            stop = _to_datetime(np.array([episode.end]))[0] if episode.end is not None else times[-1]
            for ax in group:
                ax.axvspan(start, stop, color=ALERT_COLOUR, alpha=0.2, lw=0, label="alert episode")
        for ax in group[:-1]:
            ax.tick_params(labelbottom=False)
        group[0].set_title(
            f"sensor {sensor}: {int(ok.sum()):,} scored, {len(mine)} alert(s)",
            loc="left", fontsize=10, fontweight="bold",
        )

    bottom = axes[-1]
    locator = mdates.AutoDateLocator()
    bottom.xaxis.set_major_locator(locator)
    bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    bottom.set_xlabel("time (UTC)")
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25, lw=0.5)
        if ax is not bottom:
            ax.tick_params(labelbottom=False)

    legend: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="upper right", ncol=min(len(legend), 8), fontsize=9,
               frameon=False, bbox_to_anchor=(0.98, 1 - 0.8 / height))

    names = ", ".join(Path(s).name for s in result.sources[:3]) + (" …" if len(result.sources) > 3 else "")
    note = f"{result.scored:,} readings scored, {result.stats.alerts_raised} alert(s) raised"
    if len(all_sensors) > len(sensors):
        note += f"; showing {len(sensors)} of {len(all_sensors)} sensors (most alerts first)"
    if not separate:
        note += "; channels standardised to share a panel"
    fig.text(0.05, 1 - 0.2 / height, f"{names} — model {result.model_id}", fontsize=13, fontweight="bold", va="top")
    fig.text(0.05, 1 - 0.55 / height, note, fontsize=10, va="top")
    fig.savefig(path)
    return path


def _pick_sensors(result: ReplayResult) -> list[str]:
    """Up to MAX_SENSORS sensors: in order of appearance, or the most alerting ones when there are more."""
    sensors = result.sensors()
    if len(sensors) <= MAX_SENSORS:
        return sensors
    raised: dict[str, int] = {}
    for event in result.events:
        raised[event.sensor_id] = raised.get(event.sensor_id, 0) + (event.kind.value == "raise")
    return sorted(sensors, key=lambda s: -raised.get(s, 0))[:MAX_SENSORS]


def _plot_channel(ax: Axes, times: np.ndarray, values: np.ndarray, expected: np.ndarray, name: str) -> None:
    _line(ax, times, values, color="#444444", lw=0.8, label="seen")
    _line(ax, times, expected, color="#ff7f0e", lw=0.6, alpha=0.9, label="expected")
    ax.text(0.005, 0.95, name, transform=ax.transAxes, fontsize=9, va="top", ha="left",
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1.5})
    finite = values[np.isfinite(values)]
    if finite.size:  # scale to the data, not to wild early forecasts
        lo, hi = np.percentile(finite, [0.1, 99.9])
        pad = 0.1 * (hi - lo) or abs(hi) * 0.05 or 1.0
        ax.set_ylim(min(lo, finite.min()) - pad, max(hi, finite.max()) + pad)


def _plot_standardised(ax: Axes, times: np.ndarray, values: np.ndarray, expected: np.ndarray,
                       names: list[str]) -> None:
    """Many channels on one panel: each minus its mean over its std, the forecast the same way."""
    for c, name in enumerate(names):
        col = values[:, c]
        finite = col[np.isfinite(col)]
        mean = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std()) if finite.size > 1 and finite.std() > 0 else 1.0
        (line,) = _line(ax, times, (col - mean) / std, lw=0.7, label=name)
        _line(ax, times, (expected[:, c] - mean) / std, lw=0.4, alpha=0.6, color=line.get_color())
    ax.plot([], [], color="#777777", lw=0.4, label="expected (thin lines)")
    ax.set_ylabel("standardised", fontsize=8)


def _shade_labels(ax: Axes, times: np.ndarray, labels: dict[str, np.ndarray]) -> None:
    """Labelled anomaly windows as blue spans; change points as thin vertical lines."""
    for name, column in labels.items():
        on = np.nan_to_num(column) > 0
        if not on.any():
            continue
        if name.lower() == "changepoint":
            for t in times[on]:
                ax.axvline(t, color=LABEL_COLOUR, lw=0.8, ls=":")
            ax.plot([], [], color=LABEL_COLOUR, lw=0.8, ls=":", label=name)
            continue
        edges = np.flatnonzero(np.diff(np.r_[0, on.astype(np.int8), 0]))
        for start, stop in zip(edges[::2], edges[1::2]):
            ax.axvspan(times[start], times[stop - 1], color=LABEL_COLOUR, alpha=0.18, lw=0)
        ax.plot([], [], color=LABEL_COLOUR, alpha=0.35, lw=6, label=f"labelled {name}")


def _to_datetime(ts: np.ndarray) -> np.ndarray:
    return (np.round(ts * 1e6)).astype(np.int64).astype("datetime64[us]")


def _line(ax: Axes, times: np.ndarray, y: np.ndarray, **style: object) -> list:
    """Plot y over times, as a min/max envelope when longer than MAX_POINTS."""
    if times.size > MAX_POINTS:
        times, y = _envelope(times, y, MAX_POINTS // 2)
    return ax.plot(times, y, **style)


def _envelope(times: np.ndarray, y: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Per bucket of consecutive points: its min and max (in time order), so spikes survive decimation."""
    edges = np.linspace(0, times.size, buckets + 1).astype(np.int64)
    t_out = np.empty(2 * buckets, dtype=times.dtype)
    y_out = np.empty(2 * buckets, dtype=np.float64)
    for b in range(buckets):
        segment = y[edges[b]: edges[b + 1]]
        t_seg = times[edges[b]: edges[b + 1]]
        finite = np.isfinite(segment)
        if not finite.any():
            t_out[2 * b: 2 * b + 2] = t_seg[0]
            y_out[2 * b: 2 * b + 2] = np.nan
            continue
        lo = int(np.nanargmin(segment))
        hi = int(np.nanargmax(segment))
        first, second = sorted((lo, hi))
        t_out[2 * b], t_out[2 * b + 1] = t_seg[first], t_seg[second]
        y_out[2 * b], y_out[2 * b + 1] = segment[first], segment[second]
    return t_out, y_out
