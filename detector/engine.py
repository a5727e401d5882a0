"""The scoring engine: micro-batches of readings in, forecasts, scores and alert events out.

`Engine.step` takes arrays for many sensors at once. It gathers their state
rows from the pool, runs one network step for all of them, scores and
thresholds them, advances alert hysteresis and scatters the state back. A
sensor that occurs several times in one batch is stepped once per "wave", in
order, so the outputs are the same however a stream is cut into batches.

The engine knows no Kafka, files or CLI: the service and the CLI both feed it arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from detector import alerts, fastpath
from detector.scoring import calibration, causes, correlation, flatline, levels, normalise, seasons, thresholds
from detector.scoring import surprise as scoring_surprise
from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig
from detector.errors import ConfigError, ModelError
from detector.model.fitting import HistoryFit
from detector.model.learning import OnlineLearner
from detector.model.networks import Network
from detector.model.versions import WeightsVersion
from detector.scoring.causes import Cause
from detector.state.codec import StateCodec
from detector.state.pool import Rows, StatePool
from detector.state.waves import waves
from detector.wave import Targets, Verdict, Wave
from detector.readings.coerce import MAX_ABS_VALUE
from detector.readings.reasons import READING_REASONS, SCORED, RejectReason
from detector.readings.timestamps import usable_seconds

log = logging.getLogger("hiddenstate.engine")

if TYPE_CHECKING:
    from detector.model.store import Model


@dataclass
class EngineStats:
    """Running counts since start, for metrics and summaries."""

    scored: int = 0
    rejected: dict[RejectReason, int] = field(default_factory=lambda: {r: 0 for r in READING_REASONS})
    anomalous: int = 0
    gap_resets: int = 0
    alerts_raised: int = 0
    alerts_cleared: int = 0
    network_seconds: float = 0.0  # in network.step; on the fused path, its whole fused call (network and views)


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
    score: calibrated score in [0, 1], float64, of the reading at `target_ts`: 1 − the tail probability of the
        reading under the sensor's own history, down to 1e-6 and compressed beyond, so it never rounds to 1.0
        (0 while its sensor has no estimate yet: its first readings, the first after a gap reset); NaN where nothing was scored (rejected rows, and a look-ahead model's rows that
        release no reading), so a rejected row never looks like a normal one.
    surprise: −log10 of that tail probability (≥ 0; NaN where the score is): the same order as `score`
        (`detector.scoring.surprise`); 3 at a score of 0.999, 6 at 0.999999.
    anomalous: the reading crossed the threshold (after warm-up).
    alerting: the sensor's alert is open after this row.
    events: alert raise/clear events, in input order.
    weights_version: the version of the weights that scored the batch (`Engine.weights_version`).
    """

    sensor_ids: list[str]
    ts: np.ndarray
    status: np.ndarray
    expected: np.ndarray
    residual: np.ndarray
    score: np.ndarray
    surprise: np.ndarray
    anomalous: np.ndarray
    alerting: np.ndarray
    events: list[AlertEvent]
    target_ts: np.ndarray
    seen: np.ndarray
    delay: int = 0
    weights_version: int = 0

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
    """Steps many sensors through one shared network, each with its own state.

    path: "auto" steps every wave on the fused fast path where it covers the model and settings, with its own
    network cell for waves of at most `fastpath.FAST_MAX_BATCH` readings and torch's batched cell for larger
    ones; "fast" (its own cell), "hybrid" (torch's cell) or "batched" forces one (the same results).
    """

    def __init__(self, network: Network, config: DetectorConfig, channels: int, model_sha256: str = "",
                 path: str = "auto") -> None:
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
        self.views = frozenset(Cause(v) for v in config.views)
        """The scoring views that run (`DetectorConfig.views`)."""
        self.joint = Cause.CORRELATION in self.views and 2 <= channels <= config.correlation_max_channels
        """Whether sensors get the correlation view (see `correlation`)."""
        self.fast_level = config.level_fast_window > 0
        """Whether the level view also runs at a fast scale (see `levels.two_scales`)."""
        self._clear_level = scoring_surprise.of_score(config.clear_level) \
            if config.clear_level < 1.0 and Cause.LEVEL in self.views else np.inf
        """`clear_level` as a surprise: a channel's own level surprise at or above it holds an open alert (inf: off)."""
        self.pool = StatePool(network.state_size(channels), channels, config.capacity, config.initial_capacity,
                              lookahead=self.delay, correlation=self.joint, hidden_dtype=config.state_dtype,
                              fast_level=self.fast_level, season_bins=config.season_bins)
        self.learner = OnlineLearner(network, channels, config, base=model_sha256) \
            if config.learning == "online" else None
        """Online learning (`learning = "online"`), else None."""
        self.fitter = HistoryFit(channels, config) if config.fit_first else None
        """The fit on the stream's first readings (`fit_first`) until it is done, else None."""
        self._fitting: Future[WeightsVersion | None] | None = None  # a publishing fitter's fit, for `take_learned`
        self.weights_version = 0
        """The version of the weights that score: 0 for the loaded ones, then learnt or adopted versions."""
        self.model_sha256 = model_sha256
        self.codec = StateCodec(self.pool, model_sha256)
        self.stats = EngineStats()
        self._max_ts = -np.inf
        self._last_idle_sweep = -np.inf
        if path not in fastpath.PATHS:
            raise ConfigError(f"path must be one of {', '.join(fastpath.PATHS)}, not {path!r}")
        cell_max = {"fast": np.inf, "hybrid": 0}.get(path, fastpath.FAST_MAX_BATCH)
        self.fast = None if path == "batched" else fastpath.FastPath(self, cell_max) if path != "auto" else \
            fastpath.FastPath.for_engine(self)
        """The fused path (`detector.fastpath`), None where not covered or `path` is "batched"."""

    @classmethod
    def for_model(cls, model: Model, config: DetectorConfig, channels: int, path: str = "auto") -> Engine:
        """An engine for a loaded model: its network, with state records stamped with its weights' hash.

        A model fitted on inputs normalised over another `norm_window` than the engine's sees inputs scaled
        unlike those it learnt from: that is logged as a warning naming both windows (not refused: the
        setting is a legitimate thing to tune).
        """
        trained = (model.meta.get("trained") or {}).get("config") or {}
        window = trained.get("norm_window")
        if window is not None and float(window) != config.norm_window:
            log.warning("model %s was fitted with norm_window = %g but the engine normalises with norm_window = %g: "
                        "its forecasts will be off; set norm_window = %g or retrain (hiddenstate train --config)",
                        model.model_id, float(window), config.norm_window, float(window))
        return cls(model.network, config, channels, model.meta.get("sha256", ""), path)

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
            score=np.full(n, np.nan),
            surprise=np.full(n, np.nan),
            anomalous=np.zeros(n, dtype=bool),
            alerting=np.zeros(n, dtype=bool),
            events=[],
            target_ts=np.full(n, np.nan),
            seen=np.full((n, self.channels), np.nan),
            delay=self.delay,
            weights_version=self.weights_version,
        )
        self._check_stateless(result, values)
        accepted = np.flatnonzero(status == SCORED)
        # The pool cannot hold more distinct sensors than its capacity at once: a batch with more readings
        # (e.g. a flood of new ids) is stepped a pool-full at a time, evicting as it goes, instead of failing.
        chunk = self.pool.capacity
        for start in range(0, accepted.size, chunk):
            positions = accepted[start:start + chunk]
            ids = result.sensor_ids if positions.size == n else [result.sensor_ids[i] for i in positions.tolist()]
            slots = self.pool.assign(ids)
            if (slots < 0).any():  # ids the pool refused: empty or too long
                status[positions[slots < 0]] = RejectReason.BAD_SENSOR_ID
                positions, slots = positions[slots >= 0], slots[slots >= 0]
            for members in waves(slots):
                (self._step_wave if self.fast is None else self.fast.step_wave)(
                    result, positions[members], slots[members], values)
            if positions.size:
                self._max_ts = max(self._max_ts, float(ts[positions].max()))
        rejected = status != SCORED
        if rejected.any():
            for code in np.unique(status[rejected]).tolist():
                self.stats.rejected[RejectReason(code)] += int(np.count_nonzero(status == code))
        if len(result.events) > 1:
            result.events.sort(key=lambda e: e.ts)
        self._sweep_idle()
        if self.learner is not None and self.learner.update(self.network):
            self.weights_version = self.learner.version  # between batches: the next one scores with them
        if self.fitter is not None and self.fitter.add(result.sensor_ids, result.ts, values, result.status == SCORED):
            self._fit()
        return result

    def _fit(self) -> None:
        """Fit on the kept readings (`fit_first`): score on with the fit, or fit beside the scoring and hand the fit
        out (`take_learned`) when publishing."""
        assert self.fitter is not None
        fitter, self.fitter = self.fitter, None
        version = self._next_version()
        if fitter.publish:
            self._fitting = fitter.fit_beside(self.network, version, self.model_sha256)
            return
        fitted = fitter.fit_or_none(self.network, version, self.model_sha256)
        if fitted is not None:
            self.adopt(fitted)

    def adopt(self, weights: WeightsVersion) -> None:
        """Score from the next batch on with `weights` (call between steps); ModelError if they do not fit.

        The sensors' hidden states are kept (see detector/model/learning.py); the learner goes on from them.
        """
        weights.check(self.network, self.model_sha256, self.channels)
        self.network.load_state_dict(weights.tensors)
        self.weights_version = weights.version
        self.fitter = self._fitting = None  # weights learnt from this stream already: no fit on its first readings
        if self.learner is not None:
            self.learner.adopt(weights)

    def _next_version(self) -> int:
        return max(self.weights_version, self.learner.version if self.learner else 0) + 1

    def take_learned(self) -> WeightsVersion | None:
        """A publishing fit's or learner's newest version not yet taken (`HistoryFit.publish`,
        `OnlineLearner.publish`), else None."""
        if self._fitting is not None and self._fitting.done():
            fitting, self._fitting = self._fitting, None
            fitted = fitting.result()
            if fitted is not None:  # it supersedes what the learner made while it fitted, and is numbered after it
                if self.learner is not None:
                    self.learner.published = None
                return replace(fitted, version=self._next_version())
        if self.learner is None or self.learner.published is None:
            return None
        weights, self.learner.published = self.learner.published, None
        return weights

    def _check_stateless(self, result: StepResult, values: np.ndarray) -> None:
        status = result.status
        if values.shape[1] != self.channels:
            status[status == SCORED] = RejectReason.WRONG_CHANNELS
            return
        bad_ts = ~usable_seconds(result.ts, self.config.max_future_seconds)  # the one timestamp rule's range
        bad_values = ~(np.abs(values) <= MAX_ABS_VALUE).all(axis=1)  # NaN, inf, or beyond what the state can hold
        if bad_ts.any() or bad_values.any():
            ok = status == SCORED
            status[ok & bad_ts] = RejectReason.BAD_TIMESTAMP
            status[(status == SCORED) & bad_values] = RejectReason.NOT_FINITE

    def _step_wave(self, result: StepResult, positions: np.ndarray, slots: np.ndarray, values: np.ndarray) -> None:
        wave = self._gather(result, positions, slots, values)
        if wave is None:
            return
        st = wave.state
        if self.forecaster:
            # A forecaster: score the reading against the forecast made at the previous one, then forecast the next.
            self._score(result, st, Targets(
                wave.positions, slice(None), wave.ts, wave.values, wave.mean, wave.std, wave.count,
                expected=wave.mean + wave.std * st.forecast,
                expected_std=wave.std * np.exp(0.5 * st.forecast_logvar),
                has_estimate=(st.since_reset > 0) & (wave.count >= calibration.MIN_READINGS),
            ))
            st.forecast[:], st.forecast_logvar[:], inputs = self._observe(wave)
            if self.learner is not None:
                self.learner.observe(wave.slots, inputs, (wave.count == 0) | wave.gap,
                                     ~result.anomalous[wave.positions] & (st.active == 0))
        else:
            # A reconstruction or look-ahead model: its estimate is of the reading `delay` back (this one for
            # delay 0), which leaves the pending line now and is scored in the frame it was seen in.
            k = self.delay
            ready = st.since_reset >= k  # the network has seen the released reading (not before a reset)
            estimate, logvar, _ = self._observe(wave)
            released_ts, released_x, released_mean, released_std = self._release(wave)
            at = np.flatnonzero(ready)
            if at.size:
                count = wave.count[at] - k
                self._score(result, st, Targets(
                    wave.positions[at], at, released_ts[at], released_x[at], released_mean[at], released_std[at],
                    count,
                    expected=released_mean[at] + released_std[at] * estimate[at],
                    expected_std=released_std[at] * np.exp(0.5 * logvar[at]),
                    # as for forecasters, the first reading after a reset has no estimate from before it
                    has_estimate=(count >= calibration.MIN_READINGS) & (st.since_reset[at] > k),
                ))
        st.count[:] = wave.count + 1
        st.since_reset += 1
        st.last_ts[:] = wave.ts
        self.pool.scatter(wave.slots, st)
        result.alerting[wave.positions] = st.active > 0
        self.stats.scored += int(wave.positions.size)

    def _gather(self, result: StepResult, positions: np.ndarray, slots: np.ndarray, values: np.ndarray) -> Wave | None:
        """The wave's readings with their sensors' state, less those out of order or repeated (rejected here;
        None if that leaves none), and the hidden state of sensors back from a long gap reset."""
        ts = result.ts[positions]
        st = self.pool.gather(slots)
        count, last = st.count.copy(), st.last_ts.copy()
        seen = count > 0
        late = seen & (ts < last)
        dup = seen & (ts == last)
        if late.any() or dup.any():
            result.status[positions[late]] = RejectReason.OUT_OF_ORDER
            result.status[positions[dup]] = RejectReason.DUPLICATE
            keep = ~(late | dup)
            positions, slots, ts, count, last, seen = (
                positions[keep], slots[keep], ts[keep], count[keep], last[keep], seen[keep])
            if positions.size == 0:
                return None
            st = self.pool.rows({b: block[keep] for b, block in st.blocks.items()})
        dt = np.where(seen, ts - last, 0.0)
        gap = seen & (dt > self.config.max_gap)
        if gap.any():
            st.hidden[gap] = 0.0  # for a look-ahead model this also drops its pending readings: never scored
            st.since_reset[gap] = 0
            st.forecast[gap] = np.nan
            st.forecast_logvar[gap] = np.nan
            self.stats.gap_resets += int(gap.sum())
        # The reading's frame: the statistics as they are before it (they were updated at the previous reading).
        mean, var = st.norm_mean.copy(), st.norm_var.copy()
        step = st.norm_step.copy()
        # The sensor's previous reading: a look-ahead model's newest pending one, else the last one scored.
        prev = (st.pending_values[:, -self.channels:] if self.delay else st.last_value).copy()
        return Wave(positions, slots, st, ts, values[positions], prev, count, dt, gap, mean, var, step,
                    normalise.scale(mean, var, step))

    def _observe(self, wave: Wave) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Normalise the readings, update the statistics and step the network: its (estimate, log-variance, inputs)."""
        cfg, st, ts = self.config, wave.state, wave.ts
        z, tfeat, new_mean, new_var, new_step, st.dt_mean[:] = normalise.observe(
            wave.mean, wave.var, wave.step, st.dt_mean, wave.count, wave.values, wave.prev, wave.dt, cfg.norm_window,
            wave.gap,
        )
        frozen = self._holding(st, slice(None), ts)[:, None]
        st.norm_mean[:] = np.where(frozen, wave.mean, new_mean)
        st.norm_var[:] = np.where(frozen, wave.var, new_var)
        st.norm_step[:] = np.where(frozen, wave.step, new_step)
        features = np.empty((len(ts), self.channels, 2), dtype=np.float32)
        features[:, :, 0] = z
        features[:, :, 1] = tfeat[:, None]
        started = time.perf_counter()
        state = torch.from_numpy(st.hidden if st.hidden.dtype == np.float32 else st.hidden.astype(np.float32))
        estimate, logvar, hidden = self.network.step(torch.from_numpy(features), state)
        self.stats.network_seconds += time.perf_counter() - started
        st.hidden[:] = hidden.numpy()
        return estimate.numpy(), logvar.numpy(), features

    def _holding(self, st: Rows, at: np.ndarray | slice, ts: np.ndarray) -> np.ndarray:
        """Which of the sensors (rows `at` of `st`, readings at `ts`) hold their reference statistics still.

        While an alert is open the references hold still, so a sustained fault keeps looking like one; after
        `norm_window` readings of alert they move again, so a permanent change becomes normal.
        """
        alert_age = (ts - st.alert_start[at]) / np.maximum(st.dt_mean[at], 1e-9)
        return (st.active[at] > 0) & (alert_age < self.config.norm_window)

    def _release(self, wave: Wave) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Append this reading to each sensor's pending line and take the oldest off: (ts, values, mean, std)."""
        k, c, st = self.delay, self.channels, wave.state
        if k == 0:
            return wave.ts, wave.values, wave.mean, wave.std
        out = st.pending_ts[:, 0].copy(), st.pending_values[:, :c].copy(), st.pending_mean[:, :c].copy(), \
            st.pending_std[:, :c].copy()
        for line, new, width in ((st.pending_ts, wave.ts[:, None], 1), (st.pending_values, wave.values, c),
                                 (st.pending_mean, wave.mean, c), (st.pending_std, wave.std, c)):
            line[:, :-width] = line[:, width:]
            line[:, -width:] = new
        return out

    def _score(self, result: StepResult, st: Rows, targets: Targets) -> None:
        """Score the targets (their rows `targets.at` of the wave's state `st`); advance the level, stuck-value
        and alert state."""
        cfg = self.config
        at, x, count = targets.at, targets.values, targets.count
        n = len(targets.ts)
        z_res, err = calibration.standardised_error(x, targets.expected, targets.expected_std)
        st.repeats[at], st.run_mean[at], st.run_max[at], stuck_score, stuck_channel = flatline.update(
            st.last_value[at], st.repeats[at], st.run_mean[at], st.run_max[at], x, count > 0, cfg.stuck_after
        )
        st.last_value[at] = x
        z_level = np.clip((x - targets.mean) / targets.std, -normalise.Z_CLIP, normalise.Z_CLIP)
        usual = targets.mean  # what the level views compare each channel with
        if cfg.season_bins:
            z_level, taken, st.season[at], fit, closed = seasons.update(
                st.season[at], st.season_fit[at], z_level, targets.ts, count, st.dt_mean[at],
                (count > 0) & ~self._holding(st, at, targets.ts), cfg.season_bins,
            )
            st.season_fit[at] = fit
            usual = targets.mean + targets.std * taken
            st.level_spread[at] = seasons.bound_spread(st.level_spread[at], fit, closed)
            if self.fast_level:
                st.level_fast_spread[at] = seasons.bound_spread(st.level_fast_spread[at], fit, closed)
        st.level[at], st.level_spread[at], level_score, level_channel, level_worst = levels.update(
            st.level[at], st.level_spread[at], z_level, count, cfg.level_window, cfg.long_window
        )
        if self.fast_level:
            st.level_fast[at], st.level_fast_spread[at], _, fast_channel, fast_worst = levels.update(
                st.level_fast[at], st.level_fast_spread[at], z_level, count, cfg.level_fast_window, cfg.long_window
            )
            level_score, level_channel, level_worst = levels.two_scales(
                level_worst, level_channel, fast_worst, fast_channel, self.channels
            )
        if self.joint:
            st.joint_level[at], st.joint_cov[at], joint_score, joint_channel = correlation.update(
                st.joint_level[at], st.joint_cov[at], z_level, count, cfg.correlation_window, cfg.long_window
            )
        else:
            joint_score, joint_channel = np.zeros(n), np.zeros(n, dtype=np.int64)
        score, surprise = np.zeros(n), np.zeros(n)
        anomalous = np.zeros(n, dtype=bool)
        if targets.has_estimate.any():
            # The targets with an estimate are judged: their positions among the targets, and those targets.
            which = slice(None) if targets.has_estimate.all() else np.flatnonzero(targets.has_estimate)
            judged = targets.take(which)
            judged_at = judged.at
            # copies: `threshold_error` reports the statistics before the reading, whatever else is in the batch
            err_mean_before, err_var_before = st.err_mean[judged_at].copy(), st.err_var[judged_at].copy()
            s, st.err_short[judged_at], st.err_mean[judged_at], st.err_var[judged_at] = calibration.score(
                err[which], st.err_short[judged_at], err_mean_before, err_var_before, st.scored[judged_at],
                cfg.short_window, cfg.long_window,
            )
            st.scored[judged_at] += 1
            # The reading's score is the largest of the views that run: forecast error, shifted level, unusual
            # level vector (correlation), stuck value.
            s, cause = causes.largest(s if Cause.FORECAST in self.views else np.zeros_like(s), [
                (c, v) for c, v in ((Cause.LEVEL, level_score[which]), (Cause.CORRELATION, joint_score[which]),
                                    (Cause.STUCK, stuck_score[which])) if c in self.views])
            surprise[which] = s
            score[which] = p = scoring_surprise.to_score(s)
            anomalous[which] = thresholds.is_anomalous(p, count[which] + 1, cfg.warmup, cfg.threshold)
            # Alert state can only change where something is anomalous or an alert is open.
            if anomalous.any() or st.flags[judged_at].any() or st.active[judged_at].any():
                # The channel of whichever view made the score is the reason.
                off = np.nan_to_num(np.abs(z_res[which]), nan=0.0)
                channel = causes.choose(cause, {
                    Cause.FORECAST: off.argmax(axis=1), Cause.CORRELATION: joint_channel[which],
                    Cause.LEVEL: level_channel[which], Cause.STUCK: stuck_channel[which],
                })
                pick = np.arange(len(channel))
                by_level = (cause == Cause.LEVEL.code) | (cause == Cause.CORRELATION.code)
                # With `clear_level`, an open alert also stays open while any one channel's level is still that
                # far from the reference (held since the alert opened), judged on its own: the correction for
                # looking at C channels guards against raising on chance, not against clearing too soon.
                self._advance_alerts(result, st, judged, Verdict(
                    p, s, anomalous[which], cause, channel,
                    expected=np.where(by_level, usual[which][pick, channel], judged.expected[pick, channel]),
                    seen=judged.values[pick, channel], err_mean=err_mean_before, err_var=err_var_before,
                    held=level_worst[which] >= self._clear_level if self._clear_level < np.inf else None,
                ))

        positions = targets.positions
        result.target_ts[positions] = targets.ts
        result.seen[positions] = x
        result.expected[positions] = targets.expected
        result.residual[positions] = x - targets.expected
        result.score[positions] = score
        result.surprise[positions] = surprise
        result.anomalous[positions] = anomalous
        self.stats.anomalous += int(anomalous.sum())

    def _advance_alerts(self, result: StepResult, st: Rows, judged: Targets, verdict: Verdict) -> None:
        """Advance the hysteresis of the judged targets' sensors; remember each run's reason; emit events."""
        cfg, at = self.config, judged.at
        quiet = verdict.score < min(cfg.clear_threshold, cfg.threshold)  # hysteresis: a lower bar to clear
        if verdict.held is not None:
            quiet &= ~verdict.held
        t = alerts.update(
            st.flags[at], st.active[at] > 0, st.calm[at], st.peak[at], verdict.anomalous, verdict.score,
            cfg.raise_k, cfg.raise_n, cfg.clear_m, quiet,
        )
        st.flags[at], st.active[at], st.calm[at], st.peak[at] = t.flags, t.active, t.calm, t.peak

        # Remember the most surprising reading of the run of anomalies: that is the alert's reason.
        state_rows = np.arange(len(st))[at]
        worse = verdict.anomalous & (verdict.surprise > st.cause_surprise[at])
        if worse.any():
            w = state_rows[worse]
            st.cause_surprise[w] = verdict.surprise[worse]
            st.cause[w] = verdict.cause[worse]
            st.cause_channel[w] = verdict.channel[worse]
            st.cause_expected[w] = verdict.expected[worse]
            st.cause_seen[w] = verdict.seen[worse]

        for i in np.flatnonzero(t.raised | t.cleared).tolist():
            j, ts, sensor = int(state_rows[i]), float(judged.ts[i]), result.sensor_ids[judged.positions[i]]
            if t.raised[i]:
                st.alert_start[j] = ts
                event = AlertEvent(
                    AlertKind.RAISE, sensor, ts, ts, float(verdict.score[i]), int(st.cause_channel[j]),
                    float(st.cause_expected[j]), float(st.cause_seen[j]), cause=Cause.of(int(st.cause[j])),
                    threshold_error=thresholds.error_threshold(float(verdict.err_mean[i]), float(verdict.err_var[i]),
                                                               cfg.threshold),
                )
                self.stats.alerts_raised += 1
            else:
                event = AlertEvent(
                    AlertKind.CLEAR, sensor, ts, float(st.alert_start[j]), float(verdict.score[i]),
                    int(verdict.channel[i]), float(verdict.expected[i]), float(verdict.seen[i]),
                    peak_score=float(st.peak[j]),
                )
                self.stats.alerts_cleared += 1
            result.events.append(event)
        over = state_rows[(t.flags == 0) & ~t.active]  # no run of anomalies, no alert: no reason kept
        st.cause_surprise[over] = 0.0

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
