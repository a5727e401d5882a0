"""Weights versions: a learnt version as bytes and back, refused where it does not fit, adopted between batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector import DetectorConfig
from detector.engine import Engine
from detector.errors import ModelError
from detector.model.store import load_model
from detector.model.versions import WeightsVersion

T0 = 1_700_000_000.0


def _engine(learning: str = "off", channels: int = 2, **settings) -> Engine:
    config = DetectorConfig(learning=learning, learning_every=16, learning_rate=3e-3, **settings)
    return Engine.for_model(load_model("gru-default"), config, channels)  # its own network object each time


def _stream(steps: int, sensors: int = 6, channels: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    values = 5 + np.sin(t[:, None, None] / 9.0 + rng.uniform(0, 6, (1, sensors, channels)))
    values = values + rng.normal(0, 0.1, values.shape)
    ids = [f"s{i}" for i in range(sensors)] * steps
    return ids, np.repeat(T0 + 10.0 * t, sensors), values.reshape(-1, channels)


def _run(engine: Engine, ids, ts, values, batch: int = 24) -> list:
    return [engine.step(ids[i:i + batch], ts[i:i + batch], values[i:i + batch]) for i in range(0, len(ids), batch)]


def _learnt(steps: int = 400) -> tuple[Engine, WeightsVersion]:
    """A publishing learner's engine and the first version it published."""
    engine = _engine("online")
    assert engine.learner is not None
    engine.learner.publish = True
    ids, ts, values = _stream(steps)
    before = {k: v.clone() for k, v in engine.network.state_dict().items()}
    published = None
    for i in range(0, len(ids), 24):
        engine.step(ids[i:i + 24], ts[i:i + 24], values[i:i + 24])
        published = published or engine.take_learned()
    assert published is not None, "the learner published no version"
    # publishing leaves the scoring weights as they were: they change only when a version is adopted
    assert all(torch.equal(before[k], v) for k, v in engine.network.state_dict().items())
    assert engine.weights_version == 0
    return engine, published


def test_a_version_survives_bytes_and_keeps_what_it_was_learnt_from():
    _, published = _learnt()
    back = WeightsVersion.from_bytes(published.to_bytes())
    assert (back.version, back.base, back.channels, back.writer) == (
        published.version, published.base, 2, published.writer)
    assert back.architecture == published.architecture and back.created_at == published.created_at
    assert all(torch.equal(back.tensors[k], v) for k, v in published.tensors.items())


def test_garbage_is_not_a_version():
    with pytest.raises(ModelError, match="not a weights record"):
        WeightsVersion.from_bytes(b"\x00" * 40)
    with pytest.raises(ModelError, match="not a weights record"):
        WeightsVersion.from_bytes(b"{}")


def test_weights_that_do_not_fit_are_refused():
    _, published = _learnt()
    with pytest.raises(ModelError, match="channel"):
        _engine(channels=3).adopt(published)
    other = Engine.for_model(load_model("lstm-default"), DetectorConfig(), 2)
    with pytest.raises(ModelError, match="learnt from model"):
        other.adopt(published)
    wrong = WeightsVersion(published.version, {k: v[..., :1] for k, v in published.tensors.items()},
                           published.base, published.architecture, published.channels)
    engine = _engine()
    with pytest.raises(ModelError, match="tensors"):
        engine.adopt(wrong)
    assert engine.weights_version == 0  # nothing adopted


def test_an_adopted_version_scores_as_the_learner_would_and_every_state_stays_readable():
    learner, published = _learnt()
    ids, ts, values = _stream(200, seed=1)
    ts = ts + 1e5
    follower = _engine()
    first = _run(follower, ids[:240], ts[:240], values[:240])
    exported = follower.export_state(sorted(set(ids)))
    follower.adopt(published)  # mid-stream, between batches
    assert follower.weights_version == published.version
    rest = _run(follower, ids[240:], ts[240:], values[240:])
    assert all(r.weights_version == 0 for r in first) and all(r.weights_version == published.version for r in rest)
    assert all(np.isfinite(r.score[r.status == 0]).all() for r in rest)
    # the states written before the change are read after it, as states of the same model
    report = follower.import_state(sorted(set(ids)), [e for e in exported if e is not None])
    assert report.refused == 0 and report.model_changed == 0 and report.restored == 6
    # a second engine that adopts the same version from the start scores exactly alike: one version, one meaning
    a, b = _engine(), _engine()
    a.adopt(published)
    b.adopt(WeightsVersion.from_bytes(published.to_bytes()))
    ra = np.concatenate([r.score for r in _run(a, ids, ts, values, 24)])
    rb = np.concatenate([r.score for r in _run(b, ids, ts, values, 7)])
    np.testing.assert_allclose(ra, rb, rtol=0, atol=1e-5)


def test_the_learner_goes_on_from_another_learners_version():
    _, published = _learnt()
    successor = _engine("online")
    assert successor.learner is not None
    successor.learner.publish = True
    successor.adopt(published)
    assert all(torch.equal(successor.learner.net.state_dict()[k], v) for k, v in published.tensors.items())
    ids, ts, values = _stream(400, seed=2)
    newer = None
    for i in range(0, len(ids), 24):
        successor.step(ids[i:i + 24], ts[i:i + 24], values[i:i + 24])
        newer = newer or successor.take_learned()
    assert newer is not None and newer.version == published.version + 1 and newer.writer != published.writer


def test_an_inactive_learner_publishes_nothing():
    engine = _engine("online")
    assert engine.learner is not None
    engine.learner.publish, engine.learner.active = True, False
    ids, ts, values = _stream(400)
    _run(engine, ids, ts, values)
    assert engine.take_learned() is None and engine.learner.stats.updates == 0
