"""Model directories: save/load round trip, checksums, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detector import Detector, ModelError, load_model, save_model
from detector.model.store import Model, shipped_model_names, untrained
from detector.model.networks import GRUForecaster


def test_save_and_load_round_trip_gives_identical_scores(tmp_path):
    model = untrained(hidden_size=8, layers=2, seed=5)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.model_id == model.model_id and loaded.meta["sha256"]
    values = np.sin(np.arange(100.0))[:, None]
    a = Detector(model, channels=1).score_arrays(["s"] * 100, np.arange(100.0), values)
    b = Detector(str(tmp_path / "m"), channels=1).score_arrays(["s"] * 100, np.arange(100.0), values)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.expected, b.expected)


def test_tampered_weights_are_refused(tmp_path):
    save_model(untrained(hidden_size=4), tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model(tmp_path / "m")


def test_weights_of_the_wrong_shape_are_refused(tmp_path):
    save_model(untrained(hidden_size=4), tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["hyperparameters"]["hidden_size"] = 16
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not fit"):
        load_model(tmp_path / "m")


def test_unknown_model_name_lists_the_shipped_ones():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'.*shipped models"):
        load_model("no-such-model")


def test_unknown_architecture(tmp_path):
    save_model(untrained(hidden_size=4), tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["hyperparameters"]["architecture"] = "transformer"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="unknown architecture"):
        load_model(tmp_path / "m")


def test_the_shipped_default_model_loads_and_beats_persistence():
    assert "gru-default" in shipped_model_names()
    model = load_model("gru-default")
    assert isinstance(model.network, GRUForecaster)
    metrics = model.meta["metrics"]
    assert metrics["val_mse"] < metrics["persistence_val_mse"]
    assert sum(p.numel() for p in model.network.parameters()) * 4 < 5_000_000


def test_training_reduces_loss_and_saves_a_loadable_model(tmp_path):
    from detector.cli import main

    assert main(["train", "--synthetic", "16", "--steps", "300", "--epochs", "2", "--hidden", "8",
                 "--out", str(tmp_path / "tiny")]) == 0
    model = load_model(tmp_path / "tiny")
    assert model.meta["trained"]["data"]["sensors"] == 16
    assert (tmp_path / "tiny" / "MODEL_CARD.md").read_text().startswith("# Model card: tiny")
    torch.manual_seed(0)
    Detector(model, channels=1).score_one("a", 1.0, 1.0)


def test_model_object_is_reused_not_copied():
    model = untrained(hidden_size=4)
    assert isinstance(model, Model)
    det = Detector(model, channels=1)
    assert det.engine.network is model.network


def test_a_model_fitted_with_another_norm_window_is_named_at_load(caplog):
    """`TrainConfig.norm_window` must match the engine's: the engine says so when they differ."""
    import logging

    from detector import Detector, DetectorConfig

    with caplog.at_level(logging.WARNING, logger="hiddenstate.engine"):
        Detector("gru-default", config=DetectorConfig(), channels=1)
    assert not caplog.records  # shipped with norm_window = 500, the default
    with caplog.at_level(logging.WARNING, logger="hiddenstate.engine"):
        Detector("gru-default", config=DetectorConfig(norm_window=200), channels=1)
    assert any("norm_window = 500" in r.getMessage() and "norm_window = 200" in r.getMessage() for r in caplog.records)
