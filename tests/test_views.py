"""The `views` setting: which scoring views run, and that a view left out neither scores nor names an alert."""

from __future__ import annotations

import numpy as np
import pytest

from detector import Detector, DetectorConfig
from detector.alerts import AlertKind
from detector.config import load_config
from detector.errors import ConfigError

T0 = 1_700_000_000.0


def _run(values: np.ndarray, **settings: object):
    det = Detector(config=DetectorConfig(**settings), channels=values.shape[1])
    result = det.score_arrays(["s"] * len(values), T0 + 60.0 * np.arange(len(values)), values)
    return [e for e in result.events if e.kind is AlertKind.RAISE], result


def _frozen() -> np.ndarray:
    values = 10 + np.random.default_rng(2).normal(0, 1, 3000)
    values[2000:2300] = values[1999]
    return values[:, None]


def test_a_view_left_out_scores_nothing_and_names_no_alert():
    raised, _ = _run(_frozen())
    assert raised and raised[0].cause == "stuck"  # the default views catch the frozen channel
    assert all(e.cause != "stuck" for e in _run(_frozen(), views=("forecast", "level"))[0])
    raised, result = _run(_frozen(), views=("stuck",))
    assert [e.cause for e in raised] == ["stuck"]
    assert result.surprise[100:2000].max() == 0.0  # the stuck view alone: nothing before the freeze


def test_one_view_alone_names_only_itself():
    rng = np.random.default_rng(5)
    values = np.column_stack([10 + rng.normal(0, 1, 3000), 3 + rng.normal(0, 0.5, 3000)])
    values[1500:1600, 0] += 5.0  # a level shift
    values[2200:2205, 1] += 8.0  # a spike
    for view in ("forecast", "level"):
        raised, _ = _run(values.copy(), views=(view,))
        assert raised and {e.cause for e in raised} == {view}
    raised, result = _run(values.copy(), views=("stuck",))
    assert raised == [] and result.surprise[100:].max() < 3  # nothing here is stuck


def test_views_from_text_environment_and_errors(monkeypatch):
    assert load_config(views="level, stuck,level").views == ("level", "stuck")
    monkeypatch.setenv("HIDDENSTATE_VIEWS", "forecast,correlation")
    assert load_config().views == ("forecast", "correlation")
    for bad in ("bogus", ""):
        with pytest.raises(ConfigError, match="views"):
            load_config(views=bad)


def test_correlation_runs_only_when_named():
    from detector.engine import Engine
    from detector.model.store import load_model

    model = load_model("gru-default")
    assert not Engine.for_model(model, DetectorConfig(), 4).joint
    assert Engine.for_model(model, DetectorConfig(views=("level", "correlation")), 4).joint
    assert not Engine.for_model(model, DetectorConfig(views=("correlation",), correlation_max_channels=3), 4).joint
