"""The fused path: the same step as the batched path, fused per reading in numba.

`Engine.step` on the batched path costs a fixed ~150 small numpy and torch calls per wave, whatever its size:
~700 µs at batch 1, and at large batches the views' temporaries, gathers and scatters cost more than the
network. `FastPath.step_wave` does the same wave in one compiled call (`kernel.step_wave`), so the engine has
one meaning and two speeds. The network steps inside that call (the cells of `cells.lane_step`) for waves of
at most `FAST_MAX_BATCH` readings; larger waves step it with torch's batched cell after the call, and
`kernel.put_network` writes the results back (the measured crossovers, docs/performance.md). `Engine(path=...)`
forces one path.

Covered: forecasters `gru`, `lstm` and `rnn` (every activation), any number of layers and channels, with the
views forecast, level and stuck, float32 network state, online learning and `fit_first`. Not covered (the
batched path runs them): `encdec` and `bidir`, the correlation view on multichannel sensors,
`level_fast_window`, `season_bins`, `state_dtype = "float16"`. `FastPath.for_engine` says which of these
keeps an engine off it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from detector.alerts import AlertEvent, AlertKind
from detector.errors import ConfigError
from detector.fastpath import kernel
from detector.fastpath.cells import NetWeights, kind_of
from detector.scoring import thresholds
from detector.scoring.causes import Cause

if TYPE_CHECKING:
    from detector.engine import Engine, StepResult

FAST_MAX_BATCH = 64
"""Waves of at most this many readings take the fast path by default (`Engine(path="auto")`)."""

PATHS = ("auto", "fast", "hybrid", "batched")
"""`Engine(path=...)`: the fused path where covered (its own cell for waves of at most `FAST_MAX_BATCH`,
torch's above), the fused path with its own cell or with torch's for every wave, or the batched path."""


def not_covered(engine: Engine) -> str | None:
    """Why the fast path cannot run this engine's configuration, or None if it can."""
    network, config = engine.network, engine.config
    if not engine.forecaster or kind_of(network) is None:
        return f"network {type(network).__name__} ({network.architecture}) has no fast cell"
    if engine.joint:
        return "the correlation view"
    if engine.fast_level:
        return "level_fast_window"
    if config.season_bins:
        return "season_bins"
    if engine.pool.hidden_dtype != "float32":
        return f"state_dtype = {engine.pool.hidden_dtype}"
    return None


class FastPath:
    """Steps an engine's waves with the fused kernel, on the engine's own pool, settings and network."""

    def __init__(self, engine: Engine, cell_max: float = FAST_MAX_BATCH) -> None:
        reason = not_covered(engine)
        if reason is not None:
            raise ConfigError(f"the fast path does not cover {reason}; use path \"auto\" or \"batched\"")
        self.engine = engine
        self.cell_max = cell_max
        """Waves of at most this many readings step the network in the fused call (its own cell); larger ones
        with torch's batched cell."""
        cfg, views = engine.config, engine.views
        par = np.zeros(kernel.PARAMETERS)
        par[kernel.P_MAX_GAP], par[kernel.P_NORM_WINDOW] = cfg.max_gap, cfg.norm_window
        par[kernel.P_SHORT_WINDOW], par[kernel.P_LONG_WINDOW] = cfg.short_window, cfg.long_window
        par[kernel.P_LEVEL_WINDOW], par[kernel.P_THRESHOLD] = cfg.level_window, cfg.threshold
        par[kernel.P_QUIET_BELOW] = min(cfg.clear_threshold, cfg.threshold)
        par[kernel.P_CLEAR_LEVEL] = engine._clear_level
        par[kernel.P_WARMUP], par[kernel.P_STUCK_AFTER] = cfg.warmup, cfg.stuck_after
        par[kernel.P_RAISE_K], par[kernel.P_RAISE_N], par[kernel.P_CLEAR_M] = cfg.raise_k, cfg.raise_n, cfg.clear_m
        par[kernel.P_FORECAST] = Cause.FORECAST in views
        par[kernel.P_LEVEL] = Cause.LEVEL in views
        par[kernel.P_STUCK] = Cause.STUCK in views
        self._par = par
        columns = {name: (block, start, stop) for name, block, start, stop in engine.pool.byte_layout()}
        self._cols = np.array([columns[f][1] for f in kernel.FIELDS] + [columns["hidden"][2]], dtype=np.int64)
        expected_blocks = {f: b for f, b in zip(kernel.FIELDS, ["f32"] * 14 + ["f64"] * 6 + ["i32"] * 8 + ["i8"])}
        assert all(columns[f][0] == b for f, b in expected_blocks.items()) and columns["run_max"][0] == "f16"
        assert engine.pool.block("f16").shape[1] == engine.channels  # run_max is the float16 block's only field
        self._key: tuple[int, ...] | None = None
        self._weights: NetWeights | None = None
        self._parameters: list = []
        self._version = -1

    @classmethod
    def for_engine(cls, engine: Engine) -> FastPath | None:
        """A fast path for `engine`, or None where its configuration is not covered (`not_covered`)."""
        return None if not_covered(engine) is not None else cls(engine)

    @property
    def weights(self) -> NetWeights:
        """The network's weights as the kernel reads them, repacked whenever the torch parameters changed."""
        network = self.engine.network
        if self._weights is None or self._version != self.engine.weights_version:  # parameters may be new tensors
            self._parameters, self._version = list(network.parameters()), self.engine.weights_version
            self._key = None
        key = NetWeights.key(self._parameters)
        if key != self._key or self._weights is None:
            self._weights, self._key = NetWeights.of(network), key
        return self._weights

    def step_wave(self, result: StepResult, positions: np.ndarray, slots: np.ndarray, values: np.ndarray) -> None:
        """`Engine._step_wave` for one wave (each sensor at most once), fused.

        The network steps in the fused call (its scalar cell: the fastest for small waves) for waves of at most
        `cell_max` readings, else with torch's batched cell between the fused call and `kernel.put_network`."""
        engine, pool, stats = self.engine, self.engine.pool, self.engine.stats
        cell = slots.size <= self.cell_max
        weights = self.weights
        f16, b32 = pool.block("f16"), pool.block("f32")
        run_max = f16[slots].astype(np.float32)
        n, channels = slots.size, engine.channels
        ev = np.empty((n, kernel.EVENT_FIELDS))
        features = np.empty((n, channels, 2), dtype=np.float32)
        learn = np.zeros((n, 3), dtype=bool)
        counts = np.zeros(3, dtype=np.int64)
        lanes = np.empty((0 if cell else n, self._cols[kernel.HIDDEN_END] - self._cols[kernel.HIDDEN]), np.float32)
        started = time.perf_counter()
        events = kernel.step_wave(
            slots, positions, result.ts, values, b32, pool.block("f64"), pool.block("i32"),
            pool.block("i8"), run_max, self._cols, self._par, weights.packed, weights.shape, weights.slope,
            result.status, result.expected, result.residual, result.score, result.surprise, result.anomalous,
            result.alerting, result.target_ts, result.seen, ev, features, learn, counts, cell, lanes,
        )
        if not cell:
            kept = learn[:, kernel.L_TAKEN]
            rows = slice(None) if kept.all() else kept  # a view, no copies, in the usual case
            if kept.any():
                estimate, logvar, state = engine.network.step(torch.from_numpy(features[rows]),
                                                              torch.from_numpy(lanes[rows]))
                kernel.put_network(slots[rows], b32, self._cols, state.numpy(), estimate.numpy(), logvar.numpy())
        stats.network_seconds += time.perf_counter() - started  # the whole fused step: network and views
        f16[slots] = run_max
        stats.gap_resets += int(counts[0])
        stats.scored += int(counts[1])
        stats.anomalous += int(counts[2])
        if events:
            self._events(result, positions, slots, ev)
        if engine.learner is not None:
            taken = learn[:, kernel.L_TAKEN]
            engine.learner.observe(slots[taken], features[taken], learn[taken, kernel.L_RESET],
                                   learn[taken, kernel.L_KEEP])

    def _events(self, result: StepResult, positions: np.ndarray, slots: np.ndarray, ev: np.ndarray) -> None:
        """The wave's raise and clear events, as `Engine._advance_alerts` makes them."""
        engine, pool = self.engine, self.engine.pool
        for i in np.flatnonzero(ev[:, kernel.EV_KIND]).tolist():
            j, pos = int(slots[i]), int(positions[i])
            ts, sensor, row = float(result.ts[pos]), result.sensor_ids[pos], ev[i]
            if row[kernel.EV_KIND] == kernel.RAISED:
                event = AlertEvent(
                    AlertKind.RAISE, sensor, ts, ts, float(row[kernel.EV_SCORE]), int(pool.cause_channel[j]),
                    float(pool.cause_expected[j]), float(pool.cause_seen[j]), cause=Cause.of(int(pool.cause[j])),
                    threshold_error=thresholds.error_threshold(float(row[kernel.EV_ERR_MEAN]),
                                                               float(row[kernel.EV_ERR_VAR]), engine.config.threshold),
                )
                engine.stats.alerts_raised += 1
            else:
                event = AlertEvent(
                    AlertKind.CLEAR, sensor, ts, float(pool.alert_start[j]), float(row[kernel.EV_SCORE]),
                    int(row[kernel.EV_CHANNEL]), float(row[kernel.EV_EXPECTED]), float(row[kernel.EV_SEEN]),
                    peak_score=float(pool.peak[j]),
                )
                engine.stats.alerts_cleared += 1
            result.events.append(event)


__all__ = ["FAST_MAX_BATCH", "PATHS", "FastPath", "not_covered"]
