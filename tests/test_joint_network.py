"""joint-gru: all of a sensor's channels through one network, the error still attributed per channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import Detector, DetectorConfig
from detector.alerts import AlertKind
from detector.errors import ModelError
from detector.model.networks import MAX_JOINT_CHANNELS, build_network
from detector.model.store import Model, load_model, save_model
from detector.model.training import TrainConfig, evaluate, prepare, prepare_joint, train
from detector.replay import replay_files
from tests.test_engine import _run, _stream

T0 = 1_700_000_000.0
JOINT = {"architecture": "joint-gru", "hidden_size": 8, "layers": 2, "channels": 3}


def _joint(seed: int = 3, **hp) -> Model:
    torch.manual_seed(seed)
    return Model(name="joint", network=build_network({**JOINT, **hp}).eval())


# -- the network ----------------------------------------------------------------------------------


def test_step_gives_per_channel_estimates_and_one_state_per_sensor():
    net = _joint().network
    x = torch.randn(5, 3, 2)
    mean, logvar, h = net.step(x, torch.zeros(5, net.state_size(3)))
    assert mean.shape == logvar.shape == (5, 3) and h.shape == (5, 2 * 8)
    assert net.state_size(3) == 16  # layers × hidden per sensor, not per channel


def test_step_by_step_equals_the_sequence_run():
    net = _joint().network
    x = torch.randn(4, 30, 3, 2)
    mean, logvar, last = net(x)
    h, means, logvars = torch.zeros(4, net.state_size(3)), [], []
    for t in range(30):
        m, lv, h = net.step(x[:, t], h)
        means.append(m)
        logvars.append(lv)
    torch.testing.assert_close(torch.stack(means, 1), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(logvars, 1), logvar, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, last, rtol=1e-5, atol=1e-5)


def test_an_untrained_network_forecasts_about_no_change():
    """The head predicts a change from each channel's current value (as the other forecasters do)."""
    net = _joint().network
    x = torch.randn(64, 3, 2) * 3
    mean, _, _ = net.step(x, torch.zeros(64, net.state_size(3)))
    assert (mean - x[..., 0]).abs().mean() < 0.5 < x[..., 0].abs().mean()


def test_another_channel_count_is_refused_with_what_to_do():
    net = _joint().network
    with pytest.raises(ModelError, match="exactly 3 channel.*train one for these"):
        net.state_size(2)
    with pytest.raises(ModelError, match="exactly 3"):
        net.step(torch.zeros(1, 4, 2), torch.zeros(1, 16))
    for channels in (0, MAX_JOINT_CHANNELS + 1):
        with pytest.raises(ModelError, match="channels must be 1 to 32"):
            build_network({**JOINT, "channels": channels})


def test_an_engine_for_another_channel_count_is_refused_at_construction():
    model = _joint()
    with pytest.raises(ModelError, match="exactly 3 channel"):
        Detector(model, channels=2)
    det = Detector(model)  # channels learnt from the first batch: refused there
    with pytest.raises(ModelError, match="exactly 3 channel"):
        det.score_arrays(["a"], np.array([T0]), np.zeros((1, 4)))
    assert Detector(model, channels=3).score_arrays(["a"], np.array([T0]), np.zeros((1, 3))).status[0] == 0


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 240), max_size=12))
def test_results_do_not_depend_on_batching(seed, cuts):
    """As for the channel-independent networks (tests/test_engine.py): one by one, cut anywhere, or whole."""
    model = _joint()
    stream = _stream(sensors=4, steps=60, channels=3, seed=seed)
    one_by_one, _ = _run(model, stream, list(range(1, len(stream))), 3)
    batched, _ = _run(model, stream, sorted(cuts), 3)
    whole, _ = _run(model, stream, [], 3)
    for a, b, c in zip(one_by_one, batched, whole):
        assert a[:2] == b[:2] == c[:2]
        np.testing.assert_allclose([a[2], b[2]], [c[2], c[2]], atol=1e-5)
        assert a[3:5] == b[3:5] == c[3:5]
        scale = 10.0 ** int(a[0][1:])
        np.testing.assert_allclose(np.stack([a[5], b[5]]), np.stack([c[5], c[5]]), rtol=1e-5, atol=1e-5 * scale)


# -- stored, restored, replayed -------------------------------------------------------------------


def test_save_load_round_trip_keeps_weights_channel_names_and_scores(tmp_path):
    model = _joint()
    model.meta["channel_names"] = ["a", "b", "c"]
    save_model(model, tmp_path / "j")
    loaded = load_model(tmp_path / "j")
    assert loaded.network.hyperparameters == {**JOINT}
    assert loaded.meta["channel_names"] == ["a", "b", "c"]
    values = np.random.default_rng(0).normal(size=(80, 3)).cumsum(0)
    a = Detector(model, channels=3).score_arrays(["s"] * 80, T0 + np.arange(80.0), values)
    b = Detector(loaded, channels=3).score_arrays(["s"] * 80, T0 + np.arange(80.0), values)
    np.testing.assert_array_equal(a.expected, b.expected)
    np.testing.assert_array_equal(a.score, b.score)


def test_state_records_round_trip_with_the_joint_state_size():
    model = _joint()
    values = np.random.default_rng(1).normal(size=(200, 3)).cumsum(0)
    ts = T0 + np.arange(200.0)
    whole = Detector(model, channels=3)
    expected = np.concatenate([whole.score_arrays(["s"], ts[t:t + 1], values[t:t + 1]).expected for t in range(200)])
    first = Detector(model, channels=3)
    for t in range(120):
        first.score_arrays(["s"], ts[t:t + 1], values[t:t + 1])
    (record,) = first.engine.export_state(["s"])
    second = Detector(model, channels=3)
    report = second.engine.import_state(["s"], [record])
    assert (report.restored, report.refused) == (1, 0)
    rest = np.concatenate([second.score_arrays(["s"], ts[t:t + 1], values[t:t + 1]).expected for t in range(120, 200)])
    np.testing.assert_array_equal(rest, expected[120:])
    # a pool for another joint model (other channel count) cannot read it
    other = Detector(_joint(channels=2), channels=2)
    assert other.engine.import_state(["s"], [record]).refused == 1


def _csv(path, names, rows=60, seed=0):
    values = np.random.default_rng(seed).normal(size=(rows, len(names))).cumsum(0)
    lines = ["ts," + ",".join(names)] + [f"{T0 + i},{','.join(map(repr, v.tolist()))}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_replay_refuses_files_whose_channels_are_not_the_models(tmp_path):
    model = _joint()
    model.meta["channel_names"] = ["a", "b", "c"]
    save_model(model, tmp_path / "j")
    config = DetectorConfig(model=str(tmp_path / "j"))
    assert replay_files([_csv(tmp_path / "ok.csv", ["a", "b", "c"])], config).scored == 60
    with pytest.raises(ModelError, match=r"channels \['b', 'a', 'c'\] but model .* reads \['a', 'b', 'c'\]"):
        replay_files([_csv(tmp_path / "swapped.csv", ["b", "a", "c"])], config)


# -- training ---------------------------------------------------------------------------------------


def test_prepare_joint_holds_the_same_features_as_prepare_one_lane_per_sensor():
    rng = np.random.default_rng(0)
    ts, values = np.arange(50.0), rng.normal(size=(50, 2, 3)).cumsum(0)  # [T, sensors, channels]
    x, y = prepare(ts, values, 500.0)
    xj, yj = prepare_joint(ts, values, 500.0)
    assert xj.shape == (2, 49, 3, 2) and yj.shape == (2, 49, 3)
    np.testing.assert_array_equal(xj.transpose(0, 2, 1, 3).reshape(6, 49, 2), x)
    np.testing.assert_array_equal(yj.transpose(0, 2, 1).reshape(6, 49), y)


def test_training_a_joint_network_on_channel_lanes_is_refused():
    x, y = prepare(np.arange(40.0), np.zeros((40, 4, 2)), 500.0)
    with pytest.raises(Exception, match="joint-gru trains on sensor lanes: prepare them with prepare_joint"):
        train(x, y, TrainConfig(architecture="joint-gru", epochs=1))


def test_train_command_writes_a_joint_model_with_its_channel_names(tmp_path, capsys):
    from detector.cli import main

    files = [str(_csv(tmp_path / f"s{i}.csv", ["p", "q"], rows=80, seed=i)) for i in range(3)]
    out = tmp_path / "m"
    assert main(["train", *files, "--arch", "joint-gru", "--hidden", "6", "--epochs", "1", "--val-fraction", "0.34",
                 "--out", str(out)]) == 0
    model = load_model(out)
    assert model.network.hyperparameters == {"architecture": "joint-gru", "hidden_size": 6, "layers": 1, "channels": 2}
    assert model.meta["channel_names"] == ["p", "q"]
    assert model.meta["metrics"]["train_lanes"] == 2  # lanes are sensors (files), not channels
    card = (out / "MODEL_CARD.md").read_text()
    assert "exactly these 2 channels: p, q" in card and "--arch joint-gru" in card
    _csv(tmp_path / "other.csv", ["p", "r"], rows=80)
    assert main(["train", *files, str(tmp_path / "other.csv"), "--arch", "joint-gru", "--epochs", "1",
                 "--out", str(tmp_path / "n")]) != 0
    assert "same columns in the same order" in capsys.readouterr().err


def _walks(sensors: int, steps: int, seed: int):
    """Step-major readings of 3-channel random walks."""
    values = np.random.default_rng(seed).normal(size=(steps, sensors, 3)).cumsum(0).reshape(-1, 3)
    return [f"s{i}" for i in range(sensors)] * steps, np.repeat(T0 + np.arange(steps) * 60.0, sensors), values


def test_online_learning_learns_with_one_lane_per_sensor():
    ids, ts, values = _walks(4, 400, seed=2)
    model = _joint()
    before = [p.detach().clone() for p in model.network.parameters()]
    det = Detector(model, config=DetectorConfig(learning="online", learning_every=16, learning_rate=3e-3), channels=3)
    for i in range(0, len(ids), 32):
        r = det.score_arrays(ids[i:i + 32], ts[i:i + 32], values[i:i + 32])
        assert np.isfinite(r.score).all()
    assert det.engine.weights_version > 5 and det.engine.learner.stats.skipped == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, det.engine.network.parameters()))


def test_fit_first_fits_a_joint_model_on_one_lane_per_sensor():
    ids, ts, values = _walks(6, 300, seed=4)
    model = _joint()
    before = [p.detach().clone() for p in model.network.parameters()]
    det = Detector(model, config=DetectorConfig(fit_first=1200), channels=3)
    versions = [det.score_arrays(ids[i:i + 60], ts[i:i + 60], values[i:i + 60]).weights_version
                for i in range(0, len(ids), 60)]
    assert versions[:20] == [0] * 20 and set(versions[20:]) == {1}
    assert det.engine.fitter is None and det.engine.network.state_size(3) == model.network.state_size(3)
    assert any(not torch.equal(a, b) for a, b in zip(before, det.engine.network.parameters()))


# -- what it is for: channels that move together ----------------------------------------------------


def _ar(rng: np.random.Generator, steps: int, sensors: int, phi: float = 0.9) -> np.ndarray:
    """[steps, sensors] of AR(1) processes (stationary, std about 2.3), started at 0."""
    out = np.zeros((steps, sensors))
    for t in range(1, steps):
        out[t] = phi * out[t - 1] + rng.normal(size=sensors)
    return out


def _coupled(sensors: int, steps: int, seed: int) -> np.ndarray:
    """[steps, sensors, 3]: ch0 an AR(1) process, ch1 follows ch0 one reading later (+ small noise), ch2 its own.

    A channel-independent model sees three AR(1) processes (each forecastable only from its own past); a joint
    one can forecast ch1 from ch0 almost exactly.
    """
    rng = np.random.default_rng(seed)
    lead = _ar(rng, steps + 1, sensors)
    follower = lead[:-1] + 0.05 * rng.normal(size=(steps, sensors))
    return np.stack([lead[1:], follower, _ar(rng, steps, sensors)], axis=-1)


@pytest.fixture(scope="module")
def coupled_models():
    """A joint-gru and a channel-independent gru of similar size, trained alike on the same 24 coupled sensors."""
    values, ts = _coupled(24, 300, seed=0), np.arange(300.0)
    common = dict(hidden_size=16, epochs=12, patience=0, lr=1e-2, k1=50, val_fraction=0.2, seed=0)
    joint, _ = train(*prepare_joint(ts, values, 500.0), TrainConfig(architecture="joint-gru", **common))
    x, y = prepare(ts, values, 500.0)
    single, _ = train(x, y, TrainConfig(architecture="gru", **common), groups=np.repeat(np.arange(24), 3))
    return joint, single


def test_a_joint_model_forecasts_coupled_channels_better_than_a_channel_independent_one(coupled_models):
    joint, single = coupled_models
    ts, held_out = np.arange(300.0), _coupled(8, 300, seed=99)
    xj, yj = (torch.from_numpy(a) for a in prepare_joint(ts, held_out, 500.0))
    x, y = (torch.from_numpy(a) for a in prepare(ts, held_out, 500.0))
    joint_nll, single_nll = evaluate(joint.network, xj, yj), evaluate(single.network, x, y)
    assert joint_nll < single_nll - 0.2, (joint_nll, single_nll)


def test_a_broken_relation_is_seen_by_the_joint_model_and_named_on_its_channel(coupled_models):
    """ch1 stops following ch0 at reading 300 and goes on as an AR(1) process of its own (its usual values and
    moves): each channel alone still looks as usual, so only a model of the channels together can see it."""
    values = _coupled(1, 360, seed=7)[:, 0]
    rng = np.random.default_rng(8)
    for t in range(300, 360):
        values[t, 1] = 0.9 * values[t - 1, 1] + rng.normal()
    config = DetectorConfig(views=("forecast",))
    ts = T0 + 60.0 * np.arange(360)
    peak = {}
    for name, model in zip(("joint", "single"), coupled_models):
        r = Detector(model, config=config, channels=3).score_arrays(["m"] * 360, ts, values)
        peak[name] = float(np.nanmax(r.surprise[300:]))
        if name == "joint":
            raised = [e for e in r.events if e.kind is AlertKind.RAISE]
            assert raised and all(e.channel == 1 for e in raised), raised
            assert T0 + 60.0 * 300 <= raised[0].ts < T0 + 60.0 * 320
    assert peak["joint"] > 2 * peak["single"], peak


def test_the_service_refuses_configured_channel_names_that_are_not_the_models():
    from consumers.config import ServiceConfig
    from consumers.service import ScoringService

    model = _joint()
    model.meta["channel_names"] = ["a", "b", "c"]
    config = dict(metrics_port=0, detector=DetectorConfig(channels=3))
    assert ScoringService(ServiceConfig(channel_names=["a", "b", "c"], **config), model).engine is not None
    with pytest.raises(ModelError, match="channel_names has channels"):
        ScoringService(ServiceConfig(channel_names=["c", "b", "a"], **config), model)
