"""The scoring engine: micro-batches of readings in, forecasts, scores and alert events out.

`Engine.step` takes arrays for many sensors at once. It gathers their state
rows from the pool, runs one network step for all of them, scores and
thresholds them, advances alert hysteresis and scatters the state back. A
sensor that occurs several times in one batch is stepped once per "wave", in
order, so the outputs are the same however a stream is cut into batches.

The engine knows no Kafka, files or CLI: the service and the CLI both feed it arrays.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from detector import alerts, calibration, flatline, normalise, thresholds
from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig
from detector.networks import GRUForecaster
from detector.state_pool import StatePool
from detector.validation import MAX_SENSOR_ID_LENGTH, SCORED, RejectReason


@dataclass
class EngineStats:
    """Running counts since start, for metrics and summaries."""

    scored: int = 0
    rejected: dict[RejectReason, int] = field(default_factory=lambda: {r: 0 for r in RejectReason})
    anomalous: int = 0
    gap_resets: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    network_seconds: float = 0.0


@dataclass
class StepResult:
    """Outputs for one batch, row i for input row i.

    status: 0 if scored, else a RejectReason value.
    expected: the forecast the reading was compared with (NaN before a sensor has one).
    residual: seen − expected per channel.
    score: calibrated score in [0, 1] (0 for rejected rows and a sensor's first reading).
    anomalous: the reading crossed the threshold (after warm-up).
    alerting: the sensor's alert is open after this reading.
    events: alert raise/clear events, in input order.
    """

    sensor_ids: list[str]
    ts: np.ndarray
    status: np.ndarray
    expected: np.ndarray
    residual: np.ndarray
    score: np.ndarray
    anomalous: np.ndarray
    alerting: np.ndarray
    events: list[AlertEvent]

    def __len__(self) -> int:
        return len(self.sensor_ids)

    def reason(self, i: int) -> RejectReason | None:
        code = int(self.status[i])
        return None if code == SCORED else RejectReason(code)


class Engine:
    """Steps many sensors through one shared network, each with its own state."""

    def __init__(self, network: GRUForecaster, config: DetectorConfig, channels: int) -> None:
        self.network = network.eval()
        self.config = config
        self.channels = channels
        self.pool = StatePool(network.state_size(channels), channels, config.capacity, config.initial_capacity)
        self.stats = EngineStats()
        self._max_ts = -np.inf
        self._last_idle_sweep = -np.inf

    def step(
        self,
        sensor_ids: Sequence[str],
        ts: np.ndarray,
        values: np.ndarray,
        status: np.ndarray | None = None,
    ) -> StepResult:
        """Score one micro-batch of readings.

        sensor_ids: B ids; ts: B float seconds; values: [B, channels] floats.
        status: optional B codes from decoding (non-zero rows are passed through as rejected).
        """
        n = len(sensor_ids)
        ts = np.asarray(ts, dtype=np.float64).reshape(n)
        values = np.asarray(values, dtype=np.float64).reshape(n, -1)
        status = np.zeros(n, dtype=np.int8) if status is None else np.array(status, dtype=np.int8).reshape(n)
        result = StepResult(
            sensor_ids=list(sensor_ids),
            ts=ts,
            status=status,
            expected=np.full((n, self.channels), np.nan),
            residual=np.full((n, self.channels), np.nan),
            score=np.zeros(n, dtype=np.float32),
            anomalous=np.zeros(n, dtype=bool),
            alerting=np.zeros(n, dtype=bool),
            events=[],
        )
        self._check_stateless(result, values)
        rows = np.flatnonzero(status == SCORED)
        if rows.size:
            slots = self.pool.assign([result.sensor_ids[i] for i in rows.tolist()])
            for wave in _waves(slots):
                self._step_wave(result, rows[wave], slots[wave], values)
            self._max_ts = max(self._max_ts, float(ts[rows].max()))
        for code in np.unique(status[status != SCORED]).tolist():
            self.stats.rejected[RejectReason(code)] += int(np.count_nonzero(status == code))
        if result.events:
            result.events.sort(key=lambda e: e.ts)
        self._sweep_idle()
        return result

    def _check_stateless(self, result: StepResult, values: np.ndarray) -> None:
        status = result.status
        ok = status == SCORED
        if values.shape[1] != self.channels:
            status[ok] = RejectReason.WRONG_CHANNELS
            return
        bad_id = np.fromiter(
            (not s or len(s) > MAX_SENSOR_ID_LENGTH for s in result.sensor_ids), dtype=bool, count=len(status)
        )
        status[ok & bad_id] = RejectReason.BAD_SENSOR_ID
        ok = status == SCORED
        status[ok & ~np.isfinite(result.ts)] = RejectReason.BAD_TIMESTAMP
        ok = status == SCORED
        status[ok & ~np.all(np.isfinite(values), axis=1)] = RejectReason.NOT_FINITE

    def _step_wave(self, result: StepResult, rows: np.ndarray, slots: np.ndarray, values: np.ndarray) -> None:
        cfg, pool = self.config, self.pool
        ts = result.ts[rows]
        count = pool.count[slots]
        last = pool.last_ts[slots]
        seen = count > 0
        late = seen & (ts < last)
        dup = seen & (ts == last)
        if late.any() or dup.any():
            result.status[rows[late]] = RejectReason.OUT_OF_ORDER
            result.status[rows[dup]] = RejectReason.DUPLICATE
            keep = ~(late | dup)
            rows, slots, ts, count, last, seen = rows[keep], slots[keep], ts[keep], count[keep], last[keep], seen[keep]
            if rows.size == 0:
                return
        x = values[rows]
        dt = np.where(seen, ts - last, 0.0)

        gap = seen & (dt > cfg.max_gap)
        if gap.any():
            reset = slots[gap]
            pool.hidden[reset] = 0.0
            pool.since_reset[reset] = 0
            pool.forecast[reset] = np.nan
            pool.forecast_logvar[reset] = np.nan
            self.stats.gap_resets += int(gap.sum())

        # Score the reading against the forecast made at the previous one.
        has_forecast = (pool.since_reset[slots] > 0) & (count >= calibration.MIN_READINGS)
        # The forecast was made in the frame of the statistics as they are now (updated at the previous reading).
        norm_mean, norm_var = pool.norm_mean[slots], pool.norm_var[slots]
        std_before = normalise.scale(norm_mean, norm_var)
        expected = norm_mean + std_before * pool.forecast[slots]
        expected_std = std_before * np.exp(0.5 * pool.forecast_logvar[slots])
        z_res, err = calibration.standardised_error(x, expected, expected_std)
        repeats, run_mean, stuck_score, stuck_channel = flatline.update(
            pool.last_value[slots], pool.repeats[slots], pool.run_mean[slots], x, seen, cfg.stuck_after
        )
        pool.last_value[slots], pool.repeats[slots], pool.run_mean[slots] = x, repeats, run_mean
        score = np.zeros(rows.size, dtype=np.float32)
        anomalous = np.zeros(rows.size, dtype=bool)
        if has_forecast.any():
            f, fs = np.flatnonzero(has_forecast), slots[has_forecast]
            s, short, mean, var = calibration.score(
                err[f], pool.err_short[fs], pool.err_mean[fs], pool.err_var[fs], pool.scored[fs],
                cfg.short_window, cfg.long_window,
            )
            err_mean_before, err_var_before = pool.err_mean[fs], pool.err_var[fs]
            pool.err_short[fs], pool.err_mean[fs], pool.err_var[fs] = short, mean, var
            pool.scored[fs] += 1
            stuck = stuck_score[f] > s
            s = np.maximum(s, stuck_score[f])
            score[f] = s
            anomalous[f] = thresholds.is_anomalous(s, count[f] + 1, cfg.warmup, cfg.threshold)
            # A stuck channel is the reason whenever the run, not the forecast error, made the score.
            surprise = np.nan_to_num(np.abs(z_res[f]), nan=0.0)
            surprise[stuck, stuck_channel[f][stuck]] = np.inf
            self._advance_alerts(result, rows[f], fs, ts[f], x[f], expected[f], surprise, s, anomalous[f],
                                 err_mean_before, err_var_before)

        # Normalise, step the network and keep its forecast of the next reading.
        z, tfeat, mean, var, dt_mean = normalise.observe(
            norm_mean, norm_var, pool.dt_mean[slots], count, x, dt, cfg.norm_window, gap
        )
        features = np.empty((rows.size, self.channels, 2), dtype=np.float32)
        features[:, :, 0] = z
        features[:, :, 1] = tfeat[:, None]
        started = time.perf_counter()
        pred, logvar, hidden = self.network.step(torch.from_numpy(features), torch.from_numpy(pool.hidden[slots]))
        self.stats.network_seconds += time.perf_counter() - started
        pool.hidden[slots] = hidden.numpy()
        pool.forecast[slots] = pred.numpy()
        pool.forecast_logvar[slots] = logvar.numpy()
        pool.norm_mean[slots], pool.norm_var[slots], pool.dt_mean[slots] = mean, var, dt_mean
        pool.count[slots] = count + 1
        pool.since_reset[slots] += 1
        pool.last_ts[slots] = ts

        result.expected[rows] = expected
        result.residual[rows] = x - expected
        result.score[rows] = score
        result.anomalous[rows] = anomalous
        result.alerting[rows] = pool.active[slots]
        self.stats.scored += int(rows.size)
        self.stats.anomalous += int(anomalous.sum())

    def _advance_alerts(
        self,
        result: StepResult,
        rows: np.ndarray,
        slots: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        expected: np.ndarray,
        surprise: np.ndarray,
        score: np.ndarray,
        anomalous: np.ndarray,
        err_mean: np.ndarray,
        err_var: np.ndarray,
    ) -> None:
        cfg, pool = self.config, self.pool
        t = alerts.update(
            pool.flags[slots], pool.active[slots], pool.calm[slots], pool.peak[slots],
            anomalous, score, cfg.raise_k, cfg.raise_n, cfg.clear_m,
        )
        pool.flags[slots], pool.active[slots], pool.calm[slots], pool.peak[slots] = t.flags, t.active, t.calm, t.peak

        # Remember the most surprising reading of the run of anomalies: that is the alert's reason.
        channel = surprise.argmax(axis=1)
        worst = surprise.max(axis=1)
        pick = np.arange(rows.size)
        worse = anomalous & (worst > pool.cause_z[slots])
        if worse.any():
            ws = slots[worse]
            pool.cause_z[ws] = worst[worse]
            pool.cause_channel[ws] = channel[worse]
            pool.cause_expected[ws] = expected[pick[worse], channel[worse]]
            pool.cause_seen[ws] = x[pick[worse], channel[worse]]

        for i in np.flatnonzero(t.raised | t.cleared).tolist():
            slot = int(slots[i])
            if t.raised[i]:
                pool.alert_start[slot] = ts[i]
                event = AlertEvent(
                    AlertKind.RAISE, result.sensor_ids[rows[i]], float(ts[i]), float(ts[i]), float(score[i]),
                    int(pool.cause_channel[slot]), float(pool.cause_expected[slot]), float(pool.cause_seen[slot]),
                    cause="stuck" if np.isinf(pool.cause_z[slot]) else "forecast",
                    threshold_error=thresholds.error_threshold(float(err_mean[i]), float(err_var[i]), cfg.threshold),
                )
                self.stats.alerts_raised += 1
            else:
                c = int(channel[i])
                event = AlertEvent(
                    AlertKind.CLEAR, result.sensor_ids[rows[i]], float(ts[i]), float(pool.alert_start[slot]),
                    float(score[i]), c, float(expected[i, c]), float(x[i, c]), peak_score=float(pool.peak[slot]),
                )
                self.stats.alerts_cleared += 1
            result.events.append(event)
        quiet = (t.flags == 0) & ~t.active
        pool.cause_z[slots[quiet]] = 0.0

    def _sweep_idle(self) -> None:
        ttl = self.config.idle_ttl
        if ttl is None or not np.isfinite(self._max_ts):
            return
        # Sweep at most ten times per TTL of event time: eviction is bookkeeping, not per-batch work.
        if self._max_ts - self._last_idle_sweep >= ttl / 10:
            self._last_idle_sweep = self._max_ts
            self.pool.evict_idle(self._max_ts, ttl)


def _waves(slots: np.ndarray) -> list[np.ndarray]:
    """Split batch positions into waves: wave k holds each sensor's k-th reading, in input order."""
    if slots.size == 0:
        return []
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.ones(slots.size, dtype=bool)
    starts[1:] = sorted_slots[1:] != sorted_slots[:-1]
    positions = np.arange(slots.size)
    rank_sorted = positions - np.maximum.accumulate(np.where(starts, positions, 0))
    if rank_sorted.max() == 0:
        return [positions]
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]
