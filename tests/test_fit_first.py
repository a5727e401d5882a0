"""`fit_first`: the detector fits the loaded model once on the stream's first readings, then scores on with the fit."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from detector import Detector, DetectorConfig
from detector.cli import build_parser
from detector.cli.options import config_from_args

T0 = 1_700_000_000.0


def _fleet(sensors: int, steps: int, seed: int = 0):
    """Step-major readings of noisy sines with a period the shipped model never saw."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    values = 10 + 2 * np.sin(t[:, None] / 15.0 + rng.uniform(0, 6, sensors)) + rng.normal(0, 0.2, (steps, sensors))
    return [f"s{i}" for i in range(sensors)] * steps, np.repeat(T0 + 60.0 * t, sensors), values.reshape(-1, 1)


def _run(det: Detector, ids, ts, values, batch: int = 100) -> list:
    return [det.score_arrays(ids[i:i + batch], ts[i:i + batch], values[i:i + batch])
            for i in range(0, len(ids), batch)]


def test_the_first_readings_fit_the_model_once_and_the_rest_score_with_the_fit():
    ids, ts, values = _fleet(20, 800)
    off = Detector(config=DetectorConfig(), channels=1)
    fit = Detector(config=DetectorConfig(fit_first=8000), channels=1)
    before = {k: v.clone() for k, v in fit.engine.network.state_dict().items()}
    r_off, r_fit = _run(off, ids, ts, values), _run(fit, ids, ts, values)
    # until the batch that brings the 8000th reading, both score alike: the loaded weights
    np.testing.assert_allclose(np.concatenate([r.score for r in r_fit[:80]]),
                               np.concatenate([r.score for r in r_off[:80]]), rtol=0, atol=1e-9)
    assert [r.weights_version for r in r_fit[:80]] == [0] * 80 and {r.weights_version for r in r_fit[80:]} == {1}
    assert fit.engine.weights_version == 1 and fit.engine.fitter is None  # once
    assert any(not torch.equal(before[k], v) for k, v in fit.engine.network.state_dict().items())
    # the fit forecasts this fleet better than the shipped weights on the readings after it
    late_off = np.nanmean(np.concatenate([np.abs(r.residual) for r in r_off[-40:]]))
    late_fit = np.nanmean(np.concatenate([np.abs(r.residual) for r in r_fit[-40:]]))
    assert late_fit < 0.97 * late_off, (late_fit, late_off)


def test_too_little_to_fit_on_scores_on_with_the_loaded_weights(caplog):
    ids, ts, values = _fleet(200, 6)  # 1200 readings, 6 per sensor: nothing to learn a sequence from
    off = Detector(config=DetectorConfig(), channels=1)
    fit = Detector(config=DetectorConfig(fit_first=1000), channels=1)
    with caplog.at_level(logging.WARNING, logger="hiddenstate.engine"):
        r_fit = _run(fit, ids, ts, values)
    r_off = _run(off, ids, ts, values)
    assert fit.engine.fitter is None and fit.engine.weights_version == 0
    assert any("fit_first" in r.getMessage() and "raise fit_first" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(np.concatenate([r.score for r in r_fit]), np.concatenate([r.score for r in r_off]),
                               rtol=0, atol=1e-9)


def test_fit_first_is_a_flag_of_replay_and_serve():
    parser = build_parser()
    for command in (["replay", "x.csv"], ["serve"]):
        args = parser.parse_args([*command, "--fit-first", "5000"])
        assert config_from_args(args).fit_first == 5000


def _publishing(fit_first: int) -> Detector:
    det = Detector(config=DetectorConfig(fit_first=fit_first), channels=1)
    det.engine.fitter.publish = True  # as the Kafka service's learning instance
    return det


def _until_fitted(det: Detector, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while (fitted := det.engine.take_learned()) is None:
        assert time.monotonic() < deadline, "the fit beside the scoring never finished"
        time.sleep(0.05)
    return fitted


def test_a_publishing_detector_fits_beside_the_scoring_and_hands_the_fit_out():
    ids, ts, values = _fleet(20, 800)
    det = _publishing(8000)
    loaded = {k: v.clone() for k, v in det.engine.network.state_dict().items()}
    results = _run(det, ids[:8000], ts[:8000], values[:8000])  # the 80th batch brings the 8000th reading
    assert det.engine.fitter is None and det.engine._fitting is not None
    results += _run(det, ids[8000:], ts[8000:], values[8000:])  # scoring goes on while it fits
    assert {r.weights_version for r in results} == {0}
    fitted = _until_fitted(det)
    assert fitted.version == 1 and fitted.writer.startswith("fit-") and det.engine.take_learned() is None
    # handed out, not swapped in: the loaded weights score until the fit comes back (the service adopts it)
    assert all(torch.equal(loaded[k], v) for k, v in det.engine.network.state_dict().items())
    assert any(not torch.equal(loaded[k], fitted.tensors[k]) for k in loaded)
    det.engine.adopt(fitted)
    assert det.score_arrays(ids[:20], ts[-20:] + 60.0, values[:20]).weights_version == 1


def test_a_version_adopted_while_fitting_drops_the_fit():
    ids, ts, values = _fleet(20, 500)
    det, donor = _publishing(8000), _publishing(8000)
    _run(det, ids, ts, values)
    _run(donor, ids, ts, values)
    group_fit = _until_fitted(donor)  # another instance's version reaches this one while it fits
    own = det.engine._fitting
    det.engine.adopt(group_fit)
    assert own.result(timeout=120) is not None  # its fit finished, and is not handed out
    assert det.engine.take_learned() is None and det.engine.weights_version == group_fit.version
