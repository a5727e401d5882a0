"""One wave of a forecaster's `Engine.step`, fused: every reading's whole step in one numba call.

`step_wave` does, reading by reading, what `Engine._step_wave` does with whole-wave numpy calls: order and
gap checks, the reading's frame, the forecast, stuck and level views, calibration, threshold and alert
hysteresis, then normalisation and the network step. It reads and writes the pool's blocks in place (the
rows of `FIELDS`), except `run_max` (float16, which numba cannot hold): the caller passes those rows as a
float32 copy and writes it back. It follows the numpy code's float32 roundings, so the two paths agree to
float32 rounding; the property test in tests/test_fastpath.py holds them within 1e-5.

Where the batched path decides something for a whole wave, so does this one: a wave's alert state advances
only if one of its judged readings is anomalous or has a run or an alert open (`Engine._score`).
"""

from __future__ import annotations

import math

import numpy as np

from detector.fastpath.compiled import compiled
from detector.fastpath.cells import lane_step
from detector.readings.reasons import RejectReason
from detector.scoring import calibration, flatline, levels, normalise, surprise

FIELDS = (
    "hidden", "norm_var", "norm_step", "forecast", "forecast_logvar", "run_mean", "level", "level_spread",
    "dt_mean", "err_short", "err_mean", "err_var", "peak", "cause_surprise",  # float32 block
    "norm_mean", "last_value", "last_ts", "alert_start", "cause_expected", "cause_seen",  # float64 block
    "repeats", "count", "since_reset", "scored", "flags", "active", "calm", "cause_channel",  # int32 block
    "cause",  # int8 block
)
"""The pool fields the kernel reads and writes in place; `cols[i]` is the first column of FIELDS[i] in its block,
and `cols[HIDDEN_END]` the end of `hidden`."""
(HIDDEN, NORM_VAR, NORM_STEP, FORECAST, FORECAST_LOGVAR, RUN_MEAN, LEVEL, LEVEL_SPREAD, DT_MEAN, ERR_SHORT,
 ERR_MEAN, ERR_VAR, PEAK, CAUSE_SURPRISE, NORM_MEAN, LAST_VALUE, LAST_TS, ALERT_START, CAUSE_EXPECTED, CAUSE_SEEN,
 REPEATS, COUNT, SINCE_RESET, SCORED, FLAGS, ACTIVE, CALM, CAUSE_CHANNEL, CAUSE, HIDDEN_END) = range(len(FIELDS) + 1)

# par (float64): the settings the kernel needs, by these indices (`FastPath` fills them)
(P_MAX_GAP, P_NORM_WINDOW, P_SHORT_WINDOW, P_LONG_WINDOW, P_LEVEL_WINDOW, P_THRESHOLD, P_QUIET_BELOW,
 P_CLEAR_LEVEL, P_WARMUP, P_STUCK_AFTER, P_RAISE_K, P_RAISE_N, P_CLEAR_M, P_FORECAST, P_LEVEL, P_STUCK) = range(16)
PARAMETERS = 16

# ev (float64, a row per reading): what an alert event needs that the pool does not keep
EV_KIND, EV_CHANNEL, EV_EXPECTED, EV_SEEN, EV_ERR_MEAN, EV_ERR_VAR, EV_SCORE = range(7)
EVENT_FIELDS = 7
RAISED, CLEARED = 1.0, 2.0

# learn (bool, a row per reading): what the online learner takes
L_TAKEN, L_RESET, L_KEEP = range(3)

_LN10 = surprise.LN10
_LN2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT1_2 = math.sqrt(0.5)
_KNEE, _KNEE_Q = surprise.KNEE, surprise._KNEE_Q
_OUT_OF_ORDER, _DUPLICATE = int(RejectReason.OUT_OF_ORDER), int(RejectReason.DUPLICATE)
_MIN_READINGS, _SETTLED = calibration.MIN_READINGS, calibration._SETTLED
_ERROR_FLOOR, _SIGMA_FLOOR = calibration.ERROR_FLOOR, calibration.SIGMA_FLOOR
_Z_CLIP, _DT_CLIP, _STEP_FRACTION, _STEP_ALPHA = normalise.Z_CLIP, normalise.DT_CLIP, normalise.STEP_FRACTION, \
    normalise.STEP_ALPHA
_RUN_ALPHA, _RUN_CLIP, _MAX_RUN, _MAX_LONGEST, _MIN_USUAL = flatline.RUN_ALPHA, flatline.RUN_CLIP, \
    int(flatline.MAX_RUN), flatline.MAX_LONGEST, flatline.MIN_USUAL
_SPREAD_FLOOR = levels.SPREAD_FLOOR
f32 = np.float32


@compiled()
def log_ndtr(x: float) -> float:
    """log Φ(x), as torch.special.log_ndtr computes it (to float64 rounding)."""
    if x > -1.0:
        return math.log1p(-0.5 * math.erfc(x * _SQRT1_2))
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x * _SQRT1_2))
    # far tail, where erfc underflows: the asymptotic series of Mills' ratio
    inv = 1.0 / (x * x)
    series = 1.0 + inv * (-1.0 + inv * (3.0 + inv * (-15.0 + inv * (105.0 + inv * -945.0))))
    return -0.5 * x * x - math.log(-x) - _HALF_LOG_2PI + math.log(series)


@compiled(inline="always")
def _largest(score: float, view: float) -> float:
    return math.nan if math.isnan(score) or math.isnan(view) else max(score, view)  # np.maximum


@compiled()
def step_wave(slots: np.ndarray, positions: np.ndarray, ts_all: np.ndarray, values: np.ndarray,
              b32: np.ndarray, b64: np.ndarray, bi32: np.ndarray, bi8: np.ndarray, run_max: np.ndarray,
              cols: np.ndarray, par: np.ndarray, packed: np.ndarray, shape: np.ndarray, slope: float,
              status: np.ndarray, expected_out: np.ndarray, residual: np.ndarray, score_out: np.ndarray,
              surprise_out: np.ndarray, anomalous_out: np.ndarray, alerting: np.ndarray, target_ts: np.ndarray,
              seen_out: np.ndarray, ev: np.ndarray, features: np.ndarray, learn: np.ndarray,
              counts: np.ndarray, cell: bool, lanes: np.ndarray) -> bool:
    """Step one wave (each sensor at most once): row i is the reading at batch row `positions[i]`, its sensor at
    pool slot `slots[i]`; `run_max` [n, C] is those slots' run_max as float32. Writes the StepResult arrays at
    the positions, `ev` and `features`/`learn` per row, and adds (gap resets, scored, anomalous) to `counts`.
    Returns whether any row has an alert event.

    `cell`: step the network here, lane by lane; else leave it to the caller (torch's batched cell, faster for
    large waves): the kept rows' network state goes to `lanes` [n, state] and `put_network` writes the step's
    results back."""
    n, channels = slots.size, values.shape[1]
    state_per_lane = (cols[HIDDEN_END] - cols[HIDDEN]) // channels
    work = np.empty(max(shape[2], 2) + 8 * shape[2], dtype=np.float32)
    kept = np.zeros(n, dtype=np.bool_)
    gap = np.zeros(n, dtype=np.bool_)
    dt = np.zeros(n)
    std = np.empty((n, channels), dtype=np.float32)
    prev = np.empty((n, channels))
    judged = np.zeros(n, dtype=np.bool_)
    p = np.zeros(n)
    anomalous = np.zeros(n, dtype=np.bool_)
    cause = np.zeros(n, dtype=np.int8)
    channel_of = np.zeros((n, 4), dtype=np.int64)  # per Cause code: forecast, correlation, level, stuck
    err_before = np.zeros((n, 2))
    level_worst = np.zeros(n)
    alert_pass = False
    for i in range(n):
        s, pos = slots[i], positions[i]
        ts = ts_all[pos]
        count = bi32[s, cols[COUNT]]
        last = b64[s, cols[LAST_TS]]
        if count > 0 and ts < last:
            status[pos] = _OUT_OF_ORDER
            continue
        if count > 0 and ts == last:
            status[pos] = _DUPLICATE
            continue
        kept[i] = True
        dt[i] = ts - last if count > 0 else 0.0
        if count > 0 and dt[i] > par[P_MAX_GAP]:
            gap[i] = True
            b32[s, cols[HIDDEN]:cols[HIDDEN_END]] = 0.0
            bi32[s, cols[SINCE_RESET]] = 0
            b32[s, cols[FORECAST]:cols[FORECAST] + channels] = np.nan
            b32[s, cols[FORECAST_LOGVAR]:cols[FORECAST_LOGVAR] + channels] = np.nan
            counts[0] += 1
        has_estimate = bi32[s, cols[SINCE_RESET]] > 0 and count >= _MIN_READINGS
        err = 0.0
        stuck_score, stuck_channel, level_max, level_channel = 0.0, 0, 0.0, 0
        best_off, forecast_channel = -1.0, 0
        for c in range(channels):
            x = values[pos, c]
            mean = b64[s, cols[NORM_MEAN] + c]
            step = b32[s, cols[NORM_STEP] + c]
            floor = max(max(abs(mean) * 1e-9, 1e-12), f32(_STEP_FRACTION * step))
            sd = f32(max(f32(math.sqrt(b32[s, cols[NORM_VAR] + c])), floor))
            std[i, c] = sd
            forecast = b32[s, cols[FORECAST] + c]
            expected = mean + f32(sd * forecast)
            expected_std = f32(sd * f32(math.exp(f32(0.5 * b32[s, cols[FORECAST_LOGVAR] + c]))))
            z_res = (x - expected) / expected_std
            err += z_res * z_res
            off = 0.0 if math.isnan(z_res) else abs(z_res)
            if off > best_off:
                best_off, forecast_channel = off, c
            expected_out[pos, c] = expected
            residual[pos, c] = x - expected
            seen_out[pos, c] = x
            # stuck values (flatline.update)
            last_x = b64[s, cols[LAST_VALUE] + c]
            prev[i, c] = last_x
            repeats = bi32[s, cols[REPEATS] + c]
            run_mean = b32[s, cols[RUN_MEAN] + c]
            longest_run = run_max[i, c]
            same = count > 0 and x == last_x
            usual = max(run_mean, f32(1.0))
            if not same and repeats > 0:
                run = min(float(repeats), float(f32(_RUN_CLIP * usual)))
                rate = min(_RUN_ALPHA * run, 0.5)
                learned = float(repeats) if run_mean == 0 else usual + rate * (run - usual)
                b32[s, cols[RUN_MEAN] + c] = learned
                if longest_run == 0:
                    longest = float(repeats)
                else:
                    longest = max(float(longest_run), min(float(repeats), _RUN_CLIP * float(longest_run)))
                run_max[i, c] = min(longest, _MAX_LONGEST)
            new_repeats = min(repeats + 1, _MAX_RUN) if same else 1
            bi32[s, cols[REPEATS] + c] = new_repeats
            per_reading = -math.log10(1.0 - 1.0 / max(float(usual), _MIN_USUAL))
            longer = new_repeats - max(float(longest_run), 1.0)
            if new_repeats >= par[P_STUCK_AFTER] and run_mean > 0 and longer > 0 and longer * per_reading > stuck_score:
                stuck_score, stuck_channel = longer * per_reading, c
            b64[s, cols[LAST_VALUE] + c] = x
            # the level view (levels.update)
            z_level = min(max((x - mean) / sd, -_Z_CLIP), _Z_CLIP)
            level = b32[s, cols[LEVEL] + c]
            spread = b32[s, cols[LEVEL_SPREAD] + c]
            new_level = f32(level + (z_level - level) / par[P_LEVEL_WINDOW]) if count > 0 else f32(0.0)
            sigma = max(f32(math.sqrt(spread)), f32(_SPREAD_FLOOR))
            ratio = float(f32(new_level / sigma))
            if count >= 2 * par[P_LEVEL_WINDOW]:
                level_s = -(_LN2 + log_ndtr(-abs(ratio))) / _LN10
                if level_s > level_max:
                    level_max, level_channel = level_s, c
            alpha = max(1.0 / (count + 1.0), 1.0 / par[P_LONG_WINDOW])
            learn_level = min(f32(new_level * new_level), f32(f32(9.0 * sigma) * sigma))
            b32[s, cols[LEVEL] + c] = new_level
            b32[s, cols[LEVEL_SPREAD] + c] = spread + alpha * f32(learn_level - spread)
        err /= channels
        level_worst[i] = level_max
        level_score = level_max
        if channels > 1:  # surprise.any_of: corrected for looking at C channels
            q = 10.0 ** -level_max
            exact = -math.log10(max(-math.expm1(channels * math.log1p(-min(q, 1.0 - 1e-16))), 1e-300))
            level_score = level_max - math.log10(channels) if level_max > 12.0 else exact
        channel_of[i, 0], channel_of[i, 2], channel_of[i, 3] = forecast_channel, level_channel, stuck_channel
        if has_estimate:  # calibration.score, then the largest of the views
            judged[i] = True
            scored = bi32[s, cols[SCORED]]
            err_short, err_mean, err_var = b32[s, cols[ERR_SHORT]], b32[s, cols[ERR_MEAN]], b32[s, cols[ERR_VAR]]
            err_before[i, 0], err_before[i, 1] = err_mean, err_var
            first = scored == 0
            short = f32(err) if first else f32(err_short + (err - err_short) / par[P_SHORT_WINDOW])
            g = f32(math.log(f32(short + f32(_ERROR_FLOOR))))
            sigma_e = max(f32(math.sqrt(err_var)), f32(_SIGMA_FLOOR))
            z = 0.0 if first else (float(g) - err_mean) / sigma_e
            g_learn = min(g, f32(err_mean + f32(3.0 * sigma_e))) if scored >= _SETTLED else g
            alpha = max(1.0 / (scored + 1.0), 1.0 / par[P_LONG_WINDOW])
            diff = f32(g_learn - err_mean)
            b32[s, cols[ERR_SHORT]] = short
            b32[s, cols[ERR_MEAN]] = g if first else err_mean + alpha * diff
            b32[s, cols[ERR_VAR]] = 0.0 if first else (1.0 - alpha) * (err_var + alpha * diff * diff)
            bi32[s, cols[SCORED]] = scored + 1
            s_view = 0.0 if scored < _SETTLED else -log_ndtr(-z) / _LN10
            total = s_view if par[P_FORECAST] else 0.0
            code = 0
            if par[P_LEVEL]:
                if level_score > total:
                    code = 2
                total = _largest(total, level_score)
            if par[P_STUCK]:
                if stuck_score > total:
                    code = 3
                total = _largest(total, stuck_score)
            cause[i] = code
            surprise_out[positions[i]] = total
            p[i] = -math.expm1(-total * _LN10) if total <= _KNEE else 1.0 - _KNEE_Q * _KNEE / max(total, _KNEE)
            anomalous[i] = p[i] >= par[P_THRESHOLD] and count + 1 >= par[P_WARMUP]
            if anomalous[i] or bi32[s, cols[FLAGS]] != 0 or bi32[s, cols[ACTIVE]] != 0:
                alert_pass = True
        else:
            surprise_out[pos] = 0.0
        score_out[pos] = p[i]
        anomalous_out[pos] = anomalous[i]
        target_ts[pos] = ts
        counts[2] += anomalous[i]

    events = False
    window = (1 << int(par[P_RAISE_N])) - 1
    for i in range(n):
        ev[i, EV_KIND] = 0.0
        if not (alert_pass and judged[i]):
            continue
        s, pos = slots[i], positions[i]
        ts = ts_all[pos]
        code = cause[i]
        ch = channel_of[i, code]
        by_level = code == 2 or code == 1
        v_expected = b64[s, cols[NORM_MEAN] + ch] if by_level else expected_out[pos, ch]
        v_seen = values[pos, ch]
        anom = anomalous[i]
        quiet = p[i] < par[P_QUIET_BELOW] and not level_worst[i] >= par[P_CLEAR_LEVEL] and not anom
        active = bi32[s, cols[ACTIVE]] > 0
        flags = ((int(bi32[s, cols[FLAGS]]) & 0xFFFFFFFF) << 1 | int(anom)) & window
        bits, rest = 0, flags
        while rest:
            bits += rest & 1
            rest >>= 1
        raised = not active and bits >= par[P_RAISE_K]
        calm = bi32[s, cols[CALM]] + 1 if active and quiet else 0
        cleared = active and calm >= par[P_CLEAR_M]
        peak = b32[s, cols[PEAK]]
        b32[s, cols[PEAK]] = p[i] if raised else (max(float(peak), p[i]) if active else 0.0)
        now_active = (active or raised) and not cleared
        if cleared:
            flags, calm = 0, 0
        bi32[s, cols[FLAGS]] = flags
        bi32[s, cols[ACTIVE]] = now_active
        bi32[s, cols[CALM]] = calm
        total = surprise_out[pos]
        if anom and total > b32[s, cols[CAUSE_SURPRISE]]:
            b32[s, cols[CAUSE_SURPRISE]] = total
            bi8[s, cols[CAUSE]] = code
            bi32[s, cols[CAUSE_CHANNEL]] = ch
            b64[s, cols[CAUSE_EXPECTED]] = v_expected
            b64[s, cols[CAUSE_SEEN]] = v_seen
        if raised:
            b64[s, cols[ALERT_START]] = ts
        if raised or cleared:
            events = True
            ev[i, EV_KIND] = RAISED if raised else CLEARED
            ev[i, EV_CHANNEL], ev[i, EV_EXPECTED], ev[i, EV_SEEN] = ch, v_expected, v_seen
            ev[i, EV_ERR_MEAN], ev[i, EV_ERR_VAR], ev[i, EV_SCORE] = err_before[i, 0], err_before[i, 1], p[i]
        if flags == 0 and not now_active:
            b32[s, cols[CAUSE_SURPRISE]] = 0.0

    for i in range(n):  # normalise.observe, the network step, the counters
        learn[i, L_TAKEN] = kept[i]
        if not kept[i]:
            continue
        s, pos = slots[i], positions[i]
        ts = ts_all[pos]
        count = bi32[s, cols[COUNT]]
        dt_mean = b32[s, cols[DT_MEAN]]
        t_feature = f32(0.0)
        if count >= 2:
            ratio = max(dt[i], 1e-9) / max(dt_mean, f32(1e-9))
            t_feature = f32(min(max(math.log(ratio), -_DT_CLIP), _DT_CLIP))
        if count >= 1 and not gap[i]:
            if count <= 1:
                dt_mean = f32(dt[i])
            else:
                dt_mean = f32(dt_mean + max(1.0 / max(float(count), 1.0), 0.01) * (dt[i] - dt_mean))
            b32[s, cols[DT_MEAN]] = dt_mean
        active = bi32[s, cols[ACTIVE]] > 0
        frozen = active and (ts - b64[s, cols[ALERT_START]]) / max(dt_mean, f32(1e-9)) < par[P_NORM_WINDOW]
        alpha = max(1.0 / (count + 1.0), 1.0 / par[P_NORM_WINDOW])
        for c in range(channels):
            x = values[pos, c]
            mean = b64[s, cols[NORM_MEAN] + c]
            var = b32[s, cols[NORM_VAR] + c]
            step = b32[s, cols[NORM_STEP] + c]
            z = f32(min(max((x - mean) / std[i, c], -_Z_CLIP), _Z_CLIP)) if count > 0 else f32(0.0)
            if not frozen:
                diff = x - mean
                b64[s, cols[NORM_MEAN] + c] = mean + alpha * diff
                b32[s, cols[NORM_VAR] + c] = (1.0 - alpha) * (var + alpha * diff * diff)
                change = abs(x - prev[i, c])
                if count > 0 and change > 0 and math.isfinite(change):
                    b32[s, cols[NORM_STEP] + c] = step + _STEP_ALPHA * (change - step) if step > 0 else change
            features[i, c, 0] = z
            features[i, c, 1] = t_feature
            lane = b32[s, cols[HIDDEN] + c * state_per_lane:cols[HIDDEN] + (c + 1) * state_per_lane]
            if cell:
                estimate, logvar = lane_step(packed, shape, slope, z, t_feature, lane, work)
                b32[s, cols[FORECAST] + c] = estimate
                b32[s, cols[FORECAST_LOGVAR] + c] = logvar
            else:
                for k in range(state_per_lane):  # element by element: a slice copy costs more than these few floats
                    lanes[i, c * state_per_lane + k] = lane[k]
        bi32[s, cols[COUNT]] = count + 1
        bi32[s, cols[SINCE_RESET]] += 1
        b64[s, cols[LAST_TS]] = ts
        alerting[pos] = active
        learn[i, L_RESET] = count == 0 or gap[i]
        learn[i, L_KEEP] = not anomalous[i] and not active
        counts[1] += 1
    return events


@compiled()
def put_network(slots: np.ndarray, b32: np.ndarray, cols: np.ndarray, state: np.ndarray, estimate: np.ndarray,
                logvar: np.ndarray) -> None:
    """Write a network step's results back to the pool: row i's new `state`, `estimate` and `logvar` (the
    forecast and its log-variance per channel) to slot `slots[i]` (the kept rows of `step_wave(cell=False)`)."""
    channels, width = estimate.shape[1], state.shape[1]
    hidden, forecast, forecast_logvar = cols[HIDDEN], cols[FORECAST], cols[FORECAST_LOGVAR]
    for i in range(slots.size):  # element by element: slice assignments cost more than these few floats
        s = slots[i]
        for k in range(width):
            b32[s, hidden + k] = state[i, k]
        for c in range(channels):
            b32[s, forecast + c] = estimate[i, c]
            b32[s, forecast_logvar + c] = logvar[i, c]
