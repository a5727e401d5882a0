"""Causes: the words alert events carry, their ranking, and how the state keeps them."""

from __future__ import annotations

import json

import numpy as np

from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig
from detector.engine import Engine
from detector.model.store import load_model
from detector.scoring.causes import Cause


def test_labels_are_the_public_words():
    assert [c.label for c in Cause] == ["forecast", "correlation", "level", "stuck"]
    assert Cause.STUCK == "stuck" and Cause.of(Cause.LEVEL.code) is Cause.LEVEL
    assert [c.code for c in Cause] == [0, 1, 2, 3]


def test_raise_events_write_the_label():
    event = AlertEvent(AlertKind.RAISE, "s", 1.0, 1.0, 0.99, 0, 1.0, 2.0, cause=Cause.CORRELATION)
    assert json.dumps(event.as_dict()["cause"]) == '"correlation"'
    assert type(event.as_dict()["cause"]) is str


def test_for_model_stamps_records_with_the_weights():
    model = load_model("gru-default")
    by_hand = Engine(model.network, DetectorConfig(), 1, model.meta["sha256"])
    engine = Engine.for_model(model, DetectorConfig(), 1)
    unstamped = Engine(model.network, DetectorConfig(), 1)
    for e in (by_hand, engine, unstamped):
        e.step(["a"], np.array([1.0]), np.array([[2.0]]))
    assert engine.export_state(["a"]) == by_hand.export_state(["a"]) != unstamped.export_state(["a"])
