"""The fast path (`detector.fastpath`): the batched path's meaning, fused; equal to it within 1e-5.

Two engines, one forced onto each path, score the same random streams (random sensors, NaN and infinite
rows, bad ids, out-of-order and repeated timestamps, gaps, step changes, constant runs, spikes) in the same
random batches; every output of every step, every alert event and the final pool state must agree.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector import DetectorConfig
from detector.engine import Engine, StepResult
from detector.errors import ConfigError
from detector.fastpath import FAST_MAX_BATCH, FastPath, not_covered
from detector.fastpath.compiled import compiled
from detector.fastpath.kernel import log_ndtr
from detector.model.networks import build_network
from detector.model.store import load_model
from detector.model.versions import WeightsVersion

SHA = "ab" * 32
TOL = dict(rtol=1e-5, atol=1e-5)
CONFIG = DetectorConfig(warmup=15, raise_k=2, raise_n=3, clear_m=3, threshold=0.99, level_window=5,
                        stuck_after=4, max_gap=50.0, max_future_seconds=None)
NETWORKS = {
    "gru-default": lambda: load_model("gru-default").network,
    "gru-2x8": lambda: build_network({"architecture": "gru", "hidden_size": 8, "layers": 2}),
    "lstm-2x6": lambda: build_network({"architecture": "lstm", "hidden_size": 6, "layers": 2}),
    "rnn-prelu": lambda: build_network({"architecture": "rnn", "hidden_size": 5, "layers": 2, "activation": "prelu"}),
    "rnn-leaky": lambda: build_network({"architecture": "rnn", "hidden_size": 4, "layers": 1,
                                        "activation": "leaky_relu"}),
    "rnn-relu": lambda: build_network({"architecture": "rnn", "hidden_size": 4, "layers": 1, "activation": "relu"}),
}


def _engines(network: torch.nn.Module, config: DetectorConfig, channels: int,
             fused: str = "fast") -> tuple[Engine, Engine]:
    """An engine on the fused path (`fused`: with its own cell, "fast", or torch's, "hybrid") and one on the
    batched path, each with its own copy of the network (adopting weights writes into it)."""
    return (Engine(copy.deepcopy(network), config, channels, SHA, path=fused),
            Engine(copy.deepcopy(network), config, channels, SHA, path="batched"))


def _stream(seed: int, sensors: int, steps: int, channels: int) -> list[tuple[str, float, np.ndarray]]:
    """Readings of a few sensors, interleaved at random, with every kind of trouble the engine handles."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(sensors)] + ["", "x" * 10_000]  # the last two are refused ids
    clocks = {s: 1.7e9 + rng.uniform(0, 10) for s in ids}
    levels = {s: rng.normal(0, 10.0 ** rng.integers(-2, 4), channels) for s in ids}
    out = []
    for k in range(steps * sensors):
        sensor = ids[rng.integers(len(ids))] if rng.random() < 0.02 else ids[rng.integers(sensors)]
        u = rng.random()
        clocks[sensor] += 0.0 if u < 0.02 else -1.0 if u < 0.04 else 120.0 if u < 0.05 else rng.uniform(0.5, 2.0)
        if rng.random() < 0.03:  # a step change
            levels[sensor] = levels[sensor] + rng.normal(0, 5, channels) * (1 + np.abs(levels[sensor]))
        noise = rng.normal(0, 1, channels) * (0.1 + 0.01 * np.abs(levels[sensor]))
        value = levels[sensor] + noise * np.sin(k / 7.0)
        if sensor.endswith("1") and (k // 40) % 2:  # a sensor that sits on constant values for a while
            value = levels[sensor].copy()
        v = rng.random()
        if v < 0.02:
            value = value + 100 * (1 + np.abs(value))  # a spike
        elif v < 0.03:
            value = value.copy()
            value[rng.integers(channels)] = [np.nan, np.inf][rng.integers(2)]
        out.append((sensor, float(clocks[sensor]), np.asarray(value, dtype=np.float64)))
    return out


def _cuts(stream: list, seed: int, largest: int) -> list[list]:
    rng = np.random.default_rng(seed)
    batches, at = [], 0
    while at < len(stream):
        size = int(rng.integers(1, largest + 1))
        batches.append(stream[at:at + size])
        at += size
    return batches


def _step(engine: Engine, batch: list) -> StepResult:
    return engine.step([b[0] for b in batch], np.array([b[1] for b in batch]), np.stack([b[2] for b in batch]))


def _scales(stream: list) -> dict[str, float]:
    """Each sensor's own range: 1 + its largest finite |value|."""
    out: dict[str, float] = {}
    for sensor, _, value in stream:
        finite = np.abs(value[np.isfinite(value)])
        out[sensor] = max(out.get(sensor, 1.0), 1.0 + (finite.max() if finite.size else 0.0))
    return out


def assert_same_result(a: StepResult, b: StepResult, scale: np.ndarray | None = None) -> None:
    """Equal within 1e-5; `expected` and `residual` (in the sensor's units, from a float32 forecast in normalised
    units) within 1e-5 of each row's sensor's own range `scale`."""
    np.testing.assert_array_equal(a.status, b.status)
    for name in ("score", "surprise", "seen", "target_ts", "ts"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), **TOL, err_msg=name)
    scale = np.ones(len(a)) if scale is None else scale
    for name in ("expected", "residual"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        assert (np.nan_to_num(np.abs(x - y)) <= 1e-5 * (scale[:, None] + np.nan_to_num(np.abs(y)))).all(), name
    np.testing.assert_array_equal(a.anomalous, b.anomalous)
    np.testing.assert_array_equal(a.alerting, b.alerting)
    assert a.weights_version == b.weights_version
    assert [(e.kind, e.sensor_id, e.ts, e.started, e.cause, e.channel) for e in a.events] == \
        [(e.kind, e.sensor_id, e.ts, e.started, e.cause, e.channel) for e in b.events]
    for x, y in zip(a.events, b.events):
        np.testing.assert_allclose([x.score, x.expected, x.seen, x.threshold_error, x.peak_score],
                                   [y.score, y.expected, y.seen, y.threshold_error, y.peak_score], **TOL)


def assert_same_state(a: Engine, b: Engine) -> None:
    assert len(a.pool) == len(b.pool)
    for block in ("f32", "f64", "i32", "i8", "f16"):
        np.testing.assert_allclose(a.pool.block(block).astype(np.float64), b.pool.block(block).astype(np.float64),
                                   **TOL, err_msg=block)
    assert a.stats == b.stats.__class__(**{**b.stats.__dict__, "network_seconds": a.stats.network_seconds})


def _compare(network, config: DetectorConfig, channels: int, stream: list, batches_seed: int, largest: int,
             fused: str = "fast"):
    fast, batched = _engines(network, config, channels, fused)
    scales = _scales(stream)
    for batch in _cuts(stream, batches_seed, largest):
        assert_same_result(_step(fast, batch), _step(batched, batch), np.array([scales[b[0]] for b in batch]))
    assert_same_state(fast, batched)
    return fast, batched


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), network=st.sampled_from(sorted(NETWORKS)), channels=st.integers(1, 3),
       sensors=st.integers(1, 6), largest=st.sampled_from([1, 3, 16]),
       views=st.sampled_from([("forecast", "level", "stuck"), ("forecast",), ("level", "stuck"), ("stuck",)]),
       clear_level=st.sampled_from([0.995, 1.0]), hysteresis=st.sampled_from([(2, 3, 3), (1, 1, 1), (3, 32, 5)]),
       fused=st.sampled_from(["fast", "hybrid"]))
def test_the_fast_path_equals_the_batched_path_on_random_streams(seed, network, channels, sensors, largest, views,
                                                                  clear_level, hysteresis, fused):
    raise_k, raise_n, clear_m = hysteresis
    config = CONFIG.model_copy(update={"views": views, "clear_level": clear_level, "raise_k": raise_k,
                                       "raise_n": raise_n, "clear_m": clear_m})
    stream = _stream(seed, sensors, steps=60, channels=channels)
    torch.manual_seed(seed % 1000)
    fast, _ = _compare(NETWORKS[network](), config, channels, stream, seed + 1, largest, fused)
    assert fast.stats.scored > 0


@pytest.mark.parametrize("fused", ["fast", "hybrid"])
def test_a_long_stream_raises_and_clears_alike_on_both_paths(fused):
    """The default model on a long stream: alerts raised and cleared (both kinds of event compared)."""
    stream = _stream(3, sensors=4, steps=400, channels=2)
    fast, batched = _compare(NETWORKS["gru-default"](), CONFIG, 2, stream, 4, 8, fused)
    assert fast.stats.alerts_raised > 0 and fast.stats.alerts_cleared > 0
    assert fast.stats.gap_resets > 0 and sum(fast.stats.rejected.values()) > 0


def test_the_fast_path_takes_new_weights_after_adopt():
    network = NETWORKS["gru-default"]()
    stream = _stream(5, sensors=3, steps=120, channels=1)
    batches = _cuts(stream, 6, 4)
    fast, batched = _engines(network, CONFIG, 1)
    unchanged = Engine(copy.deepcopy(network), CONFIG, 1, SHA, path="fast")
    other = copy.deepcopy(network)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    scales = _scales(stream)
    for k, batch in enumerate(batches):
        if k == len(batches) // 2:
            for engine in (fast, batched):
                engine.adopt(WeightsVersion.of(other, 3, SHA, 1, "test"))
        a, b = _step(fast, batch), _step(batched, batch)
        _step(unchanged, batch)
        assert_same_result(a, b, np.array([scales[r[0]] for r in batch]))
    assert a.weights_version == 3
    assert not np.allclose(fast.pool.forecast[:3], unchanged.pool.forecast[:3], rtol=1e-3)  # adopting mattered
    assert_same_state(fast, batched)


@pytest.mark.parametrize("fused", ["fast", "hybrid"])
def test_online_learning_updates_reach_the_fast_path(fused):
    config = CONFIG.model_copy(update={"learning": "online", "learning_every": 8, "learning_rate": 3e-3})
    stream = _stream(8, sensors=3, steps=300, channels=1)
    fast, batched = _compare(NETWORKS["gru-2x8"](), config, 1, stream, 9, 4, fused)
    assert fast.weights_version > 1  # several updates happened, each copied into the network in place


@pytest.mark.parametrize("overrides, reason", [
    ({"views": ("forecast", "correlation")}, "correlation"),
    ({"level_fast_window": 4.0}, "level_fast_window"),
    ({"season_bins": 24}, "season_bins"),
    ({"state_dtype": "float16"}, "state_dtype"),
])
def test_what_the_fast_path_does_not_cover_runs_batched(overrides, reason):
    config = CONFIG.model_copy(update=overrides)
    engine = Engine(NETWORKS["gru-2x8"](), config, 2, SHA)
    assert engine.fast is None and reason in not_covered(engine)
    with pytest.raises(ConfigError, match=reason):
        Engine(NETWORKS["gru-2x8"](), config, 2, SHA, path="fast")


def test_a_path_is_one_of_four():
    with pytest.raises(ConfigError, match="auto, fast, hybrid, batched"):
        Engine(NETWORKS["gru-2x8"](), CONFIG, 1, SHA, path="quick")


@pytest.mark.parametrize("name", ["encdec-default", "bidir-default"])
def test_windowed_models_run_batched(name):
    engine = Engine.for_model(load_model(name), CONFIG, 1)
    assert engine.fast is None and "no fast cell" in not_covered(engine)


def test_the_default_steps_the_network_in_the_kernel_for_small_waves_only():
    engine = Engine(NETWORKS["gru-2x8"](), CONFIG, 1, SHA)
    assert isinstance(engine.fast, FastPath)
    waves, torch_steps = [], []
    step_wave, network_step = engine.fast.step_wave, engine.network.step
    engine.fast.step_wave = lambda *args: (waves.append(args[1].size), step_wave(*args))
    engine.network.step = lambda x, h: (torch_steps.append(len(x)), network_step(x, h))[1]
    for n in (1, FAST_MAX_BATCH, FAST_MAX_BATCH + 1):
        engine.step([f"s{i}" for i in range(n)], np.full(n, 1.7e9 + n), np.ones((n, 1)))
    assert waves == [1, FAST_MAX_BATCH, FAST_MAX_BATCH + 1]  # every wave fused
    assert torch_steps == [FAST_MAX_BATCH + 1]  # only the large one on torch's cell
    assert engine.stats.scored == 1 + FAST_MAX_BATCH + FAST_MAX_BATCH + 1


def test_log_ndtr_matches_torch_into_the_far_tail():
    x = np.concatenate([np.linspace(-60, 10, 2001), [-29.999, -30.0, -30.001, -1.0, -0.999]])
    ours = np.array([log_ndtr(v) for v in x])
    theirs = torch.special.log_ndtr(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_a_function_numba_cannot_cache_still_compiles():
    """Source with no file to cache beside (as a read-only install with no usable home): compiled uncached."""
    namespace = {"compiled": compiled}
    exec("@compiled()\ndef twice(x):\n    return 2 * x\n", namespace)
    assert namespace["twice"](21) == 42
