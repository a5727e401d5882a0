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

from detector import alerts
from detector.scoring import calibration, correlation, flatline, levels, normalise, thresholds
from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig
from detector.errors import ModelError
from detector.model.networks import Network
from detector.state.codec import StateCodec
from detector.state.pool import Rows, StatePool
from detector.readings.coerce import MAX_ABS_VALUE, SCORED, RejectReason


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


LEVEL_SURPRISE = 1e30
"""The surprise recorded for a shifted level: above any forecast error's |z|, below a stuck run's inf."""

JOINT_SURPRISE = 1e20
"""The surprise recorded for an unusual level vector (correlation view): above any forecast error's |z|."""


def _cause(surprise: float) -> str:
    """Which view made an alert, from the surprise recorded for its reason."""
    if np.isinf(surprise):
        return "stuck"
    return "level" if surprise >= LEVEL_SURPRISE else "correlation" if surprise >= JOINT_SURPRISE else "forecast"


@dataclass(frozen=True)
class RestoreReport:
    """What `Engine.import_state` did with its records."""

    restored: int
    model_changed: int  # restored with statistics only: written under other weights
    refused: int  # unreadable: other format, layout or channel count, or a bad sensor id


@dataclass
class StepResult:
    """Outputs for one batch, row i for input row i.

    status: 0 if the reading was accepted, else a RejectReason value.
    target_ts: the time of the reading that row i's score is for: `ts[i]` itself, except with a look-ahead
        model (`delay` k > 0), where accepting a reading releases the sensor's reading k before it for
        scoring; NaN where nothing was scored (rejected rows; the first k readings after a reset).
    seen: the values of that reading.
    expected: what the network expected it to be (NaN before a sensor has an estimate).
    residual: seen − expected per channel.
    score: calibrated score in [0, 1] (0 for rejected rows and a sensor's first reading).
    anomalous: the reading crossed the threshold (after warm-up).
    alerting: the sensor's alert is open after this row.
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
    target_ts: np.ndarray
    seen: np.ndarray
    delay: int = 0

    def __len__(self) -> int:
        return len(self.sensor_ids)

    @property
    def released(self) -> np.ndarray:
        """Rows that carry a score (of the reading at `target_ts`)."""
        return ~np.isnan(self.target_ts)

    def reason(self, i: int) -> RejectReason | None:
        code = int(self.status[i])
        return None if code == SCORED else RejectReason(code)


class Engine:
    """Steps many sensors through one shared network, each with its own state."""

    def __init__(self, network: Network, config: DetectorConfig, channels: int, model_sha256: str = "") -> None:
        offset = getattr(network, "target_offset", 1)
        if offset > 1:
            raise ModelError(f"{type(network).__name__} estimates the reading {offset} steps ahead; the engine scores"
                             " forecasts of the next reading (+1), reconstructions (0) or look-ahead estimates (-k)")
        self.network = network.eval()
        self.config = config
        self.channels = channels
        self.forecaster = offset == 1
        """Whether the network forecasts the next reading (else it estimates one it has seen: encdec, bidir)."""
        self.delay = network.lookahead
        """How many readings after a reading its score comes (bidir's look-ahead; 0 for the others)."""
        self.joint = 2 <= channels <= config.correlation_max_channels
        """Whether sensors get the correlation view (see `correlation`)."""
        self.fast_level = config.level_fast_window > 0
        """Whether the level view also runs at a fast scale (see `levels.two_scales`)."""
        self.pool = StatePool(network.state_size(channels), channels, config.capacity, config.initial_capacity,
                              lookahead=self.delay, correlation=self.joint, hidden_dtype=config.state_dtype,
                              fast_level=self.fast_level)
        self.codec = StateCodec(self.pool, model_sha256)
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
            sensor_ids=sensor_ids if isinstance(sensor_ids, list) else list(sensor_ids),
            ts=ts,
            status=status,
            expected=np.full((n, self.channels), np.nan),
            residual=np.full((n, self.channels), np.nan),
            score=np.zeros(n, dtype=np.float32),
            anomalous=np.zeros(n, dtype=bool),
            alerting=np.zeros(n, dtype=bool),
            events=[],
            target_ts=np.full(n, np.nan),
            seen=np.full((n, self.channels), np.nan),
            delay=self.delay,
        )
        self._check_stateless(result, values)
        accepted = np.flatnonzero(status == SCORED)
        # The pool cannot hold more distinct sensors than its capacity at once: a batch with more readings
        # (e.g. a flood of new ids) is stepped a pool-full at a time, evicting as it goes, instead of failing.
        chunk = self.pool.capacity
        for start in range(0, accepted.size, chunk):
            rows = accepted[start:start + chunk]
            ids = result.sensor_ids if rows.size == n else [result.sensor_ids[i] for i in rows.tolist()]
            slots = self.pool.assign(ids)
            if (slots < 0).any():  # ids the pool refused: empty or too long
                status[rows[slots < 0]] = RejectReason.BAD_SENSOR_ID
                rows, slots = rows[slots >= 0], slots[slots >= 0]
            for wave in _waves(slots):
                self._step_wave(result, rows[wave], slots[wave], values)
            if rows.size:
                self._max_ts = max(self._max_ts, float(ts[rows].max()))
        rejected = status != SCORED
        if rejected.any():
            for code in np.unique(status[rejected]).tolist():
                self.stats.rejected[RejectReason(code)] += int(np.count_nonzero(status == code))
        if len(result.events) > 1:
            result.events.sort(key=lambda e: e.ts)
        self._sweep_idle()
        return result

    def _check_stateless(self, result: StepResult, values: np.ndarray) -> None:
        status = result.status
        if values.shape[1] != self.channels:
            status[status == SCORED] = RejectReason.WRONG_CHANNELS
            return
        bad_ts = ~np.isfinite(result.ts)
        bad_values = ~(np.abs(values) <= MAX_ABS_VALUE).all(axis=1)  # NaN, inf, or beyond what the state can hold
        if bad_ts.any() or bad_values.any():
            ok = status == SCORED
            status[ok & bad_ts] = RejectReason.BAD_TIMESTAMP
            status[(status == SCORED) & bad_values] = RejectReason.NOT_FINITE

    def _step_wave(self, result: StepResult, rows: np.ndarray, slots: np.ndarray, values: np.ndarray) -> None:
        cfg, pool = self.config, self.pool
        ts = result.ts[rows]
        st = pool.gather(slots)
        count, last = st.count.copy(), st.last_ts.copy()
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
            st = pool.rows({b: block[keep] for b, block in st.blocks.items()})
        x = values[rows]
        dt = np.where(seen, ts - last, 0.0)

        gap = seen & (dt > cfg.max_gap)
        if gap.any():
            st.hidden[gap] = 0.0  # for a look-ahead model this also drops its pending readings: never scored
            st.since_reset[gap] = 0
            st.forecast[gap] = np.nan
            st.forecast_logvar[gap] = np.nan
            self.stats.gap_resets += int(gap.sum())

        # The reading's frame: the statistics as they are before it (they were updated at the previous reading).
        mean, var = st.norm_mean.copy(), st.norm_var.copy()
        std = normalise.scale(mean, var)
        if self.forecaster:
            # A forecaster: score the reading against the forecast made at the previous one, then forecast the next.
            has_forecast = (st.since_reset > 0) & (count >= calibration.MIN_READINGS)
            expected = mean + std * st.forecast
            expected_std = std * np.exp(0.5 * st.forecast_logvar)
            self._score(result, rows, st, slice(None), ts, x, mean, std, expected, expected_std, count, has_forecast)
            st.forecast[:], st.forecast_logvar[:] = self._observe(st, ts, x, dt, count, gap, mean, var)
        else:
            # A reconstruction or look-ahead model: its estimate is of the reading `delay` back (this one for
            # delay 0), which leaves the pending line now and is scored in the frame it was seen in.
            k = self.delay
            ready = st.since_reset >= k  # the network has seen the released reading (not before a reset)
            estimate, logvar = self._observe(st, ts, x, dt, count, gap, mean, var)
            r_ts, r_x, r_mean, r_std = self._release(st, ts, x, mean, std)
            r = np.flatnonzero(ready)
            if r.size:
                count_r = count[r] - k
                expected = r_mean[r] + r_std[r] * estimate[r]
                expected_std = r_std[r] * np.exp(0.5 * logvar[r])
                # as for forecasters, the first reading after a reset has no estimate from before it: not scored
                has_estimate = (count_r >= calibration.MIN_READINGS) & (st.since_reset[r] > k)
                self._score(result, rows[r], st, r, r_ts[r], r_x[r], r_mean[r], r_std[r], expected, expected_std,
                            count_r, has_estimate)
        st.count[:] = count + 1
        st.since_reset += 1
        st.last_ts[:] = ts
        pool.scatter(slots, st)
        result.alerting[rows] = st.active > 0
        self.stats.scored += int(rows.size)

    def _observe(
        self, st: Rows, ts: np.ndarray, x: np.ndarray, dt: np.ndarray, count: np.ndarray, gap: np.ndarray,
        mean: np.ndarray, var: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalise the readings, update the statistics and step the network: its (estimate, log-variance)."""
        cfg = self.config
        z, tfeat, new_mean, new_var, st.dt_mean[:] = normalise.observe(
            mean, var, st.dt_mean, count, x, dt, cfg.norm_window, gap
        )
        # While an alert is open the reference statistics hold still, so a sustained fault keeps looking like
        # one; after `norm_window` readings of alert they move again, so a permanent change becomes normal.
        alert_age = (ts - st.alert_start) / np.maximum(st.dt_mean, 1e-9)
        frozen = ((st.active > 0) & (alert_age < cfg.norm_window))[:, None]
        st.norm_mean[:] = np.where(frozen, mean, new_mean)
        st.norm_var[:] = np.where(frozen, var, new_var)
        features = np.empty((len(ts), self.channels, 2), dtype=np.float32)
        features[:, :, 0] = z
        features[:, :, 1] = tfeat[:, None]
        started = time.perf_counter()
        state = torch.from_numpy(st.hidden if st.hidden.dtype == np.float32 else st.hidden.astype(np.float32))
        estimate, logvar, hidden = self.network.step(torch.from_numpy(features), state)
        self.stats.network_seconds += time.perf_counter() - started
        st.hidden[:] = hidden.numpy()
        return estimate.numpy(), logvar.numpy()

    def _release(
        self, st: Rows, ts: np.ndarray, x: np.ndarray, mean: np.ndarray, std: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Append this reading to each sensor's pending line and take the oldest off: (ts, values, mean, std)."""
        k, c = self.delay, self.channels
        if k == 0:
            return ts, x, mean, std
        out = st.pending_ts[:, 0].copy(), st.pending_values[:, :c].copy(), st.pending_mean[:, :c].copy(), \
            st.pending_std[:, :c].copy()
        for line, new, width in ((st.pending_ts, ts[:, None], 1), (st.pending_values, x, c),
                                 (st.pending_mean, mean, c), (st.pending_std, std, c)):
            line[:, :-width] = line[:, width:]
            line[:, -width:] = new
        return out

    def _score(
        self,
        result: StepResult,
        rows: np.ndarray,
        st: Rows,
        r: np.ndarray | slice,
        ts: np.ndarray,
        x: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        expected: np.ndarray,
        expected_std: np.ndarray,
        count: np.ndarray,
        has_forecast: np.ndarray,
    ) -> None:
        """Score readings (rows `r` of `st`) seen at `ts` with values `x` in the frame (mean, std), against the
        network's `expected` ± `expected_std`; advance the level, stuck-value and alert state.

        `count` is the sensor's readings before each one; `has_forecast` marks those the network view scores.
        """
        cfg = self.config
        n = len(ts)
        z_res, err = calibration.standardised_error(x, expected, expected_std)
        st.repeats[r], st.run_mean[r], stuck_score, stuck_channel = flatline.update(
            st.last_value[r], st.repeats[r], st.run_mean[r], x, count > 0, cfg.stuck_after
        )
        st.last_value[r] = x
        z_level = np.clip((x - mean) / std, -normalise.Z_CLIP, normalise.Z_CLIP)
        st.level[r], st.level_spread[r], level_score, level_channel, level_worst = levels.update(
            st.level[r], st.level_spread[r], z_level, count, cfg.level_window, cfg.long_window
        )
        if self.fast_level:
            st.level_fast[r], st.level_fast_spread[r], _, fast_channel, fast_worst = levels.update(
                st.level_fast[r], st.level_fast_spread[r], z_level, count, cfg.level_fast_window, cfg.long_window
            )
            level_score, level_channel, level_worst = levels.two_scales(
                level_worst, level_channel, fast_worst, fast_channel, self.channels
            )
        if self.joint:
            st.joint_level[r], st.joint_cov[r], joint_score, joint_channel = correlation.update(
                st.joint_level[r], st.joint_cov[r], z_level, count, cfg.correlation_window, cfg.long_window
            )
        else:
            joint_score, joint_channel = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.int64)
        score = np.zeros(n, dtype=np.float32)
        anomalous = np.zeros(n, dtype=bool)
        if has_forecast.any():
            h = slice(None) if has_forecast.all() else np.flatnonzero(has_forecast)  # positions in this call
            f = r if isinstance(h, slice) else np.arange(len(st))[r][h]  # their rows of st
            err_mean_before, err_var_before = st.err_mean[f], st.err_var[f]
            s, st.err_short[f], st.err_mean[f], st.err_var[f] = calibration.score(
                err[h], st.err_short[f], err_mean_before, err_var_before, st.scored[f],
                cfg.short_window, cfg.long_window,
            )
            st.scored[f] += 1
            # The reading's score is the largest of four views: forecast error, shifted level, unusual level
            # vector (correlation), stuck value.
            shifted = level_score[h] > s
            s = np.maximum(s, level_score[h])
            joint = joint_score[h] > s
            s = np.maximum(s, joint_score[h])
            stuck = stuck_score[h] > s
            s = np.maximum(s, stuck_score[h])
            score[h] = s
            anomalous[h] = thresholds.is_anomalous(s, count[h] + 1, cfg.warmup, cfg.threshold)
            # Alert state can only change where something is anomalous or an alert is open.
            if anomalous.any() or st.flags[f].any() or st.active[f].any():
                # The channel of whichever view made the score is the reason: levels and stuck runs rank
                # above any forecast error (their surprise is set past every finite z).
                surprise = np.nan_to_num(np.abs(z_res[h]), nan=0.0)
                reference = expected[h].copy()
                shifted &= ~stuck & ~joint
                joint &= ~stuck
                jr = np.flatnonzero(joint)
                surprise[jr, joint_channel[h][joint]] = JOINT_SURPRISE
                reference[jr, joint_channel[h][joint]] = mean[h][jr, joint_channel[h][joint]]
                sr = np.flatnonzero(shifted)
                surprise[sr, level_channel[h][shifted]] = LEVEL_SURPRISE
                reference[sr, level_channel[h][shifted]] = mean[h][sr, level_channel[h][shifted]]
                kr = np.flatnonzero(stuck)
                surprise[kr, stuck_channel[h][stuck]] = np.inf
                # With `clear_level`, an open alert also stays open while any one channel's level is still that
                # far from the reference (held since the alert opened), judged on its own: the correction for
                # looking at C channels guards against raising on chance, not against clearing too soon.
                held = level_worst[h] >= cfg.clear_level if cfg.clear_level < 1.0 else None
                self._advance_alerts(result, rows[h], st, f, ts[h], x[h], reference, surprise, s,
                                     anomalous[h], err_mean_before, err_var_before, held)

        result.target_ts[rows] = ts
        result.seen[rows] = x
        result.expected[rows] = expected
        result.residual[rows] = x - expected
        result.score[rows] = score
        result.anomalous[rows] = anomalous
        self.stats.anomalous += int(anomalous.sum())

    def _advance_alerts(
        self,
        result: StepResult,
        rows: np.ndarray,
        st: Rows,
        f: np.ndarray | slice,
        ts: np.ndarray,
        x: np.ndarray,
        expected: np.ndarray,
        surprise: np.ndarray,
        score: np.ndarray,
        anomalous: np.ndarray,
        err_mean: np.ndarray,
        err_var: np.ndarray,
        held: np.ndarray | None = None,
    ) -> None:
        cfg = self.config
        quiet = score < min(cfg.clear_threshold, cfg.threshold)  # hysteresis: a lower bar to clear than to raise
        if held is not None:
            quiet &= ~held
        t = alerts.update(
            st.flags[f], st.active[f] > 0, st.calm[f], st.peak[f], anomalous, score, cfg.raise_k, cfg.raise_n, cfg.clear_m,
            quiet,
        )
        st.flags[f], st.active[f], st.calm[f], st.peak[f] = t.flags, t.active, t.calm, t.peak

        # Remember the most surprising reading of the run of anomalies: that is the alert's reason.
        channel = surprise.argmax(axis=1)
        worst = surprise.max(axis=1)
        pick = np.arange(len(worst))
        idx = np.arange(len(st))[f]
        worse = anomalous & (worst > st.cause_z[f])
        if worse.any():
            w = idx[worse]
            st.cause_z[w] = worst[worse]
            st.cause_channel[w] = channel[worse]
            st.cause_expected[w] = expected[pick[worse], channel[worse]]
            st.cause_seen[w] = x[pick[worse], channel[worse]]

        for i in np.flatnonzero(t.raised | t.cleared).tolist():
            j = int(idx[i])
            if t.raised[i]:
                st.alert_start[j] = ts[i]
                event = AlertEvent(
                    AlertKind.RAISE, result.sensor_ids[rows[i]], float(ts[i]), float(ts[i]), float(score[i]),
                    int(st.cause_channel[j]), float(st.cause_expected[j]), float(st.cause_seen[j]),
                    cause=_cause(float(st.cause_z[j])),
                    threshold_error=thresholds.error_threshold(float(err_mean[i]), float(err_var[i]), cfg.threshold),
                )
                self.stats.alerts_raised += 1
            else:
                c = int(channel[i])
                event = AlertEvent(
                    AlertKind.CLEAR, result.sensor_ids[rows[i]], float(ts[i]), float(st.alert_start[j]),
                    float(score[i]), c, float(expected[i, c]), float(x[i, c]), peak_score=float(st.peak[j]),
                )
                self.stats.alerts_cleared += 1
            result.events.append(event)
        quiet = idx[(t.flags == 0) & ~t.active]
        st.cause_z[quiet] = 0.0

    def export_state(self, sensor_ids: Sequence[str]) -> list[bytes | None]:
        """Each sensor's state as a record (see `state_codec`), None for sensors not held."""
        slots = self.pool.lookup(sensor_ids)
        held = np.flatnonzero(slots >= 0)
        out: list[bytes | None] = [None] * len(slots)
        for i, record in zip(held.tolist(), self.codec.encode(self.pool.gather(slots[held]))):
            out[i] = record
        return out

    def import_state(self, sensor_ids: Sequence[str], records: Sequence[bytes]) -> RestoreReport:
        """Restore sensors from records, replacing any state they have here.

        Records this pool cannot read are refused; records written under other weights keep the
        sensor's statistics, alert state and timestamps but restart its hidden state and forecast.
        """
        decoded = self.codec.decode(records)
        ids = [s for s, ok in zip(sensor_ids, decoded.ok.tolist()) if ok]
        slots = self.pool.assign(ids)
        rows, fine = decoded.rows, slots >= 0
        other = ~decoded.same_model
        rows.hidden[other] = 0.0
        rows.forecast[other] = np.nan
        rows.forecast_logvar[other] = np.nan
        rows.since_reset[other] = 0
        self.pool.scatter(slots[fine], self.pool.rows({b: v[fine] for b, v in rows.blocks.items()}))
        if fine.any():
            self._max_ts = max(self._max_ts, float(rows.last_ts[fine].max()))
        return RestoreReport(restored=int(fine.sum()), model_changed=int((other & fine).sum()),
                             refused=int((~decoded.ok).sum() + (~fine).sum()))

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
    if slots.size <= 1:
        return [np.arange(slots.size)] if slots.size else []
    in_order = np.sort(slots)  # much cheaper than the stable argsort below, and usually all a batch needs
    if (in_order[1:] != in_order[:-1]).all():
        return [np.arange(slots.size)]
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
