"""Networks: stepping one reading at a time equals running whole sequences, and equals torch's own cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detector import Detector
from detector.model.store import Model, load_model, save_model
from detector.model.networks import (
    ACTIVATIONS,
    ARCHITECTURES,
    FEATURES,
    BidirectionalGRU,
    EncoderDecoder,
    GRUForecaster,
    LSTMForecaster,
    Network,
    RNNForecaster,
    build_network,
)

FORECASTERS = [
    pytest.param(lambda: GRUForecaster(6, 1), id="gru"),
    pytest.param(lambda: GRUForecaster(6, 2), id="gru-2layer"),
    pytest.param(lambda: LSTMForecaster(6, 1), id="lstm"),
    pytest.param(lambda: LSTMForecaster(6, 3), id="lstm-3layer"),
    *[pytest.param(lambda a=a: RNNForecaster(6, 2, a, negative_slope=0.1), id=f"rnn-{a}") for a in ACTIVATIONS],
]
WINDOWED = [
    pytest.param(lambda: EncoderDecoder(5, 1, window=4), id="encdec"),
    pytest.param(lambda: EncoderDecoder(4, 2, window=7), id="encdec-2layer"),
    pytest.param(lambda: BidirectionalGRU(5, 1, lookahead=3), id="bidir-k3"),
    pytest.param(lambda: BidirectionalGRU(4, 2, lookahead=1), id="bidir-k1-2layer"),
    pytest.param(lambda: BidirectionalGRU(4, 1, lookahead=0), id="bidir-k0"),
]
ALL = FORECASTERS + WINDOWED
TOL = {"atol": 2e-5, "rtol": 2e-5}


def _net(make, seed: int = 0) -> Network:
    torch.manual_seed(seed)
    net = make().eval()
    with torch.no_grad():  # spread the weights a little beyond torch's default init, so layers matter
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def _step_all(net: Network, x: torch.Tensor, h: torch.Tensor | None = None):
    """Step [sensors, channels, T, F] one reading at a time: (means, logvars) [sensors, channels, T] and the last h."""
    sensors, channels, steps, _ = x.shape
    h = torch.zeros(sensors, net.state_size(channels)) if h is None else h
    means, logvars = [], []
    for t in range(steps):
        mean, logvar, h = net.step(x[:, :, t], h)
        means.append(mean)
        logvars.append(logvar)
    return torch.stack(means, -1), torch.stack(logvars, -1), h


@pytest.mark.parametrize("make", ALL)
def test_step_equals_sequence_with_carried_state(make):
    net = _net(make)
    sensors, channels, steps = 4, 3, 23
    x = torch.randn(sensors, channels, steps, FEATURES)
    lanes = x.reshape(sensors * channels, steps, FEATURES)
    with torch.no_grad():
        m1, l1, h1 = net(lanes[:, :9])  # cut anywhere: the state carries across the cut
        m2, l2, h2 = net(lanes[:, 9:], h1)
    mean, logvar, h = _step_all(net, x)
    torch.testing.assert_close(mean.reshape(sensors * channels, steps), torch.cat([m1, m2], 1), **TOL)
    torch.testing.assert_close(logvar.reshape(sensors * channels, steps), torch.cat([l1, l2], 1), **TOL)
    torch.testing.assert_close(h, h2.reshape(sensors, -1), **TOL)
    assert h.shape == (sensors, net.state_size(channels)) == (sensors, channels * net.state_per_lane)


@pytest.mark.parametrize("make", ALL)
def test_variable_lengths_padding_never_changes_valid_steps(make):
    """Lanes of different lengths in one padded batch: each lane's valid outputs and final state are its own."""
    net = _net(make, seed=1)
    lengths = [1, 5, 12, 17]
    x = torch.randn(len(lengths), max(lengths), FEATURES)
    padded = x.clone()
    for i, n in enumerate(lengths):
        padded[i, n:] = 7.0  # whatever the padding holds
    with torch.no_grad():
        mean_pad, logvar_pad, _ = net(padded)
        for i, n in enumerate(lengths):
            mean_one, logvar_one, h_one = net(x[i : i + 1, :n])
            torch.testing.assert_close(mean_pad[i, :n], mean_one[0], **TOL)
            torch.testing.assert_close(logvar_pad[i, :n], logvar_one[0], **TOL)
            _, _, h_step = _step_all(net, x[i : i + 1, None, :n])
            torch.testing.assert_close(h_step, h_one, **TOL)


# -- against torch's own recurrent modules -------------------------------------------------------


def _copy_weights(ours: nn.Module, theirs: nn.Module) -> None:
    ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("kind, layers", [("gru", 1), ("gru", 2), ("lstm", 1), ("lstm", 2), ("tanh", 2), ("relu", 2)])
def test_cells_match_torch_modules(kind, layers):
    """The top hidden state after each step, and the packed state, equal torch's nn.GRU/LSTM/RNN (weights copied)."""
    torch.manual_seed(2)
    hidden, lanes, steps = 5, 6, 13
    if kind == "gru":
        theirs, ours = nn.GRU(FEATURES, hidden, layers, batch_first=True), GRUForecaster(hidden, layers)
    elif kind == "lstm":
        theirs, ours = nn.LSTM(FEATURES, hidden, layers, batch_first=True), LSTMForecaster(hidden, layers)
    else:
        theirs = nn.RNN(FEATURES, hidden, layers, nonlinearity=kind, batch_first=True)
        ours = RNNForecaster(hidden, layers, activation=kind)
    _copy_weights(ours.rnn, theirs)
    ours.eval()
    x = torch.randn(lanes, steps, FEATURES)
    with torch.no_grad():
        top, final = theirs(x)
    state = torch.zeros(lanes, ours.state_per_lane)
    for t in range(steps):
        with torch.no_grad():
            out, state = ours._stack(x[:, t], ours._per_layer(state))
        state = state.reshape(lanes, -1)
        torch.testing.assert_close(out, top[:, t], **TOL)
    per_layer = ours._per_layer(state)
    if kind == "lstm":
        h_n, c_n = final
        torch.testing.assert_close(per_layer[..., :hidden].transpose(0, 1), h_n, **TOL)
        torch.testing.assert_close(per_layer[..., hidden:].transpose(0, 1), c_n, **TOL)
    else:
        torch.testing.assert_close(per_layer.transpose(0, 1), final, **TOL)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_hand_written_rnn_loop_equals_torch_fused_rnn(activation):
    """For tanh and relu, the hand-written sequence loop (used for leaky_relu/prelu) equals nn.RNN's kernel."""
    net = _net(lambda: RNNForecaster(5, 3, activation), seed=3)
    x, h0 = torch.randn(4, 19, FEATURES), torch.randn(4, net.state_per_lane)
    with torch.no_grad():
        fused = net(x, h0)
        net.fused = False
        loop = net(x, h0)
    for a, b in zip(fused, loop):
        torch.testing.assert_close(a, b, **TOL)


def test_leaky_relu_with_slope_0_is_relu_and_prelu_starts_as_leaky_relu():
    x, h0 = torch.randn(3, 11, FEATURES), torch.randn(3, 2 * 5)
    relu = _net(lambda: RNNForecaster(5, 2, "relu"), seed=4)
    nets = {a: RNNForecaster(5, 2, a, negative_slope=s) for a, s in [("leaky_relu", 0.0), ("prelu", 0.0)]}
    nets["leaky_0.3"] = RNNForecaster(5, 2, "leaky_relu", negative_slope=0.3)
    nets["prelu_0.3"] = RNNForecaster(5, 2, "prelu", negative_slope=0.3)
    for net in nets.values():
        net.load_state_dict(relu.state_dict(), strict=False)  # prelu's slope keeps its initial value
    with torch.no_grad():
        want = relu(x, h0)
        for name in ("leaky_relu", "prelu"):
            for a, b in zip(nets[name](x, h0), want):
                torch.testing.assert_close(a, b, **TOL)
        for a, b in zip(nets["leaky_0.3"](x, h0), nets["prelu_0.3"](x, h0)):
            torch.testing.assert_close(a, b, **TOL)
        assert not torch.allclose(nets["leaky_0.3"](x, h0)[0], want[0])


def test_leaky_relu_cell_matches_its_formula():
    net = _net(lambda: RNNForecaster(4, 1, "leaky_relu", negative_slope=0.2), seed=5)
    r = net.rnn
    x, h = torch.randn(3, FEATURES), torch.randn(3, 4)
    pre = x @ r.weight_ih_l0.T + r.bias_ih_l0 + h @ r.weight_hh_l0.T + r.bias_hh_l0
    want = torch.where(pre > 0, pre, 0.2 * pre)
    with torch.no_grad():
        torch.testing.assert_close(net.cell(0, x, h), want, **TOL)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bptt_gradients_of_the_hand_written_rnn_match_finite_differences(activation):
    """Backpropagation through time of the hand-written cell, all parameters and inputs, against finite differences."""
    torch.manual_seed(6)
    net = RNNForecaster(3, 2, activation, negative_slope=0.3).double()
    net.fused = False
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    x = torch.randn(2, 5, FEATURES, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, net.state_per_lane, dtype=torch.float64, requires_grad=True)

    def run(x, h0, *weights):
        mean, logvar, h = torch.func.functional_call(net, dict(zip(names, weights)), (x, h0))
        return mean, logvar, h

    assert torch.autograd.gradcheck(run, (x, h0, *params), eps=1e-6, atol=1e-6)


# -- windowed networks ---------------------------------------------------------------------------


def test_encoder_decoder_step_is_the_reconstruction_of_the_last_window():
    """Output t is the reconstruction of reading t from readings t-W+1..t alone (absent before the first)."""
    net = _net(lambda: EncoderDecoder(4, 2, window=5), seed=7)
    steps, w = 14, 5
    x = torch.randn(3, steps, FEATURES)
    mean, logvar, h = _step_all(net, x[:, None])
    entries = torch.cat([x, torch.ones(3, steps, 1)], -1)
    padded = torch.cat([torch.zeros(3, w - 1, 3), entries], 1)
    for t in range(steps):
        with torch.no_grad():
            m, lv = net.reconstruct(padded[:, t : t + w], newest_only=True)
            full_m, full_lv = net.reconstruct(padded[:, t : t + w])
        torch.testing.assert_close(mean[:, 0, t], m, **TOL)
        torch.testing.assert_close(logvar[:, 0, t], lv, **TOL)
        torch.testing.assert_close(full_m[:, -1], m, **TOL)  # the newest position of the full reconstruction
        torch.testing.assert_close(full_lv[:, -1], lv, **TOL)
    torch.testing.assert_close(h.reshape(3, w, 3), padded[:, -w:])
    # Nothing older than the window matters.
    changed = x.clone()
    changed[:, :steps - w] = torch.randn(3, steps - w, FEATURES)
    mean2, _, h2 = _step_all(net, changed[:, None])
    torch.testing.assert_close(mean2[..., -1], mean[..., -1])
    torch.testing.assert_close(h2, h)


def _bidir_reference(net: BidirectionalGRU, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate of reading j from scratch: forward GRU over the readings before j (zero readings before the first),
    backward GRU over readings j+1..j+k, head on both. Returns [lanes, T - k] for j = 0..T-k-1."""
    k, lanes, steps = net.k, x.shape[0], x.shape[1]
    padded = torch.cat([torch.zeros(lanes, k + 1, FEATURES), x], 1)  # the zero buffer of a fresh state
    means, logvars = [], []
    with torch.no_grad():
        for j in range(steps - k):
            before = padded[:, : k + 1 + j]  # every reading before j, after the buffer's zeros
            fwd, _ = net.forward_rnn(before)
            if k:
                _, h_b = net.backward_rnn(x[:, j + 1 : j + 1 + k].flip(1))
                bwd = h_b[-1]
                base = 0.5 * (before[:, -1, 0] + x[:, j + 1, 0])
            else:
                bwd, base = torch.zeros(lanes, net.hidden_size), before[:, -1, 0]
            m, lv = net._gaussian(torch.cat([fwd[:, -1], bwd], -1), base)
            means.append(m)
            logvars.append(lv)
    return torch.stack(means, 1), torch.stack(logvars, 1)


@pytest.mark.parametrize("k, layers", [(0, 1), (1, 2), (3, 1), (6, 2)])
def test_bidirectional_step_scores_reading_t_minus_k_from_both_sides(k, layers):
    net = _net(lambda: BidirectionalGRU(4, layers, lookahead=k), seed=8)
    assert net.target_offset == -k and net.lookahead == k
    x = torch.randn(3, 17, FEATURES)
    mean, logvar, _ = _step_all(net, x[:, None])
    ref_mean, ref_logvar = _bidir_reference(net, x)
    torch.testing.assert_close(mean[:, 0, k:], ref_mean, **TOL)  # step t estimates reading t - k
    torch.testing.assert_close(logvar[:, 0, k:], ref_logvar, **TOL)


@pytest.mark.parametrize("k", [0, 2, 5])
def test_bidirectional_scores_never_use_more_than_k_future_readings_nor_the_reading_itself(k):
    net = _net(lambda: BidirectionalGRU(4, 1, lookahead=k), seed=9)
    steps = 20
    x = torch.randn(2, steps, FEATURES)
    mean, _, _ = _step_all(net, x[:, None])
    for p in (7, 12):
        changed = x.clone()
        changed[:, p:] += 5.0  # a change from reading p on
        mean2, _, _ = _step_all(net, changed[:, None])
        # Reading j's estimate (at step j + k) is unchanged for every j with j + k < p ...
        torch.testing.assert_close(mean2[:, 0, : p], mean[:, 0, : p])
        # ... and changes as soon as reading p is among the k after it (k > 0), or just before it.
        assert not torch.allclose(mean2[:, 0, p + 1], mean[:, 0, p + 1])
        assert k == 0 or not torch.allclose(mean2[:, 0, p], mean[:, 0, p])
    for j in (4, 9):
        changed = x.clone()
        changed[:, j, 0] += 5.0  # only the value of reading j
        mean2, _, _ = _step_all(net, changed[:, None])
        torch.testing.assert_close(mean2[:, 0, j + k], mean[:, 0, j + k])  # its own estimate does not see it


# -- selection by name, save/load, the engine -----------------------------------------------------

CONFIGS = [
    {"architecture": "gru", "hidden_size": 5, "layers": 2},
    {"architecture": "lstm", "hidden_size": 5, "layers": 2},
    *[{"architecture": "rnn", "hidden_size": 5, "layers": 2, "activation": a} for a in ("tanh", "relu")],
    *[{"architecture": "rnn", "hidden_size": 5, "layers": 2, "activation": a, "negative_slope": 0.05}
      for a in ("leaky_relu", "prelu")],
    {"architecture": "encdec", "hidden_size": 5, "layers": 1, "window": 6},
    {"architecture": "bidir", "hidden_size": 5, "layers": 1, "lookahead": 2},
]


@pytest.mark.parametrize("hp", CONFIGS, ids=lambda hp: f"{hp['architecture']}-{hp.get('activation', '')}")
def test_every_architecture_is_built_by_name_and_round_trips(hp, tmp_path):
    net = build_network(hp)
    assert net.hyperparameters == hp and hp["architecture"] in ARCHITECTURES
    assert isinstance(net.target_offset, int)
    save_model(Model("m", net.eval()), tmp_path / "m")
    loaded = load_model(tmp_path / "m").network
    x, h = torch.randn(3, 2, FEATURES), torch.randn(3, net.state_size(2))
    for a, b in zip(net.step(x, h), loaded.step(x, h)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_hyperparameters_are_a_model_error():
    from detector import ModelError

    with pytest.raises(ModelError, match="activation"):
        build_network({"architecture": "rnn", "hidden_size": 4, "layers": 1, "activation": "sigmoid"})
    with pytest.raises(ModelError, match="bad hyperparameters"):
        build_network({"architecture": "lstm", "hidden_size": 4, "layers": 1, "window": 3})


@pytest.mark.parametrize("hp", CONFIGS[:6], ids=lambda hp: f"{hp['architecture']}-{hp.get('activation', '')}")
def test_forecasters_run_in_the_engine_batched_as_one_by_one(hp):
    """Every forecaster is usable by the engine today: a batch of sensors scores as they do one by one."""
    torch.manual_seed(10)
    model = Model("m", build_network(hp).eval())
    rng = np.random.default_rng(0)
    steps, sensors = 40, 3
    values = np.sin(np.arange(steps)[:, None, None] / 5.0 + rng.uniform(0, 6, (1, sensors, 2)))
    values = values + 0.05 * rng.standard_normal(values.shape)
    ids = [f"s{i}" for i in range(sensors)]
    batched = Detector(model, channels=2)
    single = Detector(model, channels=2)
    for t in range(steps):
        a = batched.score_arrays(ids, np.full(sensors, float(t)), values[t])
        for i in range(sensors):
            b = single.score_arrays([ids[i]], np.array([float(t)]), values[t, i : i + 1])
            np.testing.assert_allclose(a.expected[i], b.expected[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.score[i], b.score[0], rtol=1e-5, atol=1e-6)
    assert np.isfinite(a.expected).all()


def test_hidden_state_carries_information():
    torch.manual_seed(1)
    for net in (GRUForecaster(6), LSTMForecaster(6), RNNForecaster(6, activation="prelu")):
        net.eval()
        x = torch.randn(1, 1, FEATURES)
        zero = torch.zeros(1, net.state_size(1))
        _, _, h = net.step(torch.randn(1, 1, FEATURES), zero)
        a, _, _ = net.step(x, zero)
        b, _, _ = net.step(x, h)
        assert not torch.allclose(a, b)


def test_untrained_forecasters_predict_no_change():
    """The residual path: with a zero head, every forecaster forecasts the current value."""
    for net in (GRUForecaster(4), LSTMForecaster(4, 2), RNNForecaster(4, activation="leaky_relu")):
        nn.init.zeros_(net.head.weight)
        nn.init.zeros_(net.head.bias)
        x = torch.randn(5, 3, FEATURES)
        mean, logvar, _ = net.step(x, torch.randn(5, net.state_size(3)))
        torch.testing.assert_close(mean, x[..., 0])
        assert torch.all(logvar == 0)


def test_every_shipped_model_loads_beats_persistence_is_small_and_documented():
    from pathlib import Path

    from detector.model.store import shipped_model_names, shipped_models_dir

    doc = (Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text()
    names = shipped_model_names()
    assert {"gru-default", "gru-2layer", "lstm-default", "rnn-tanh", "rnn-relu", "rnn-leaky", "rnn-prelu",
            "encdec-default", "bidir-default"} <= set(names)
    for name in names:
        model = load_model(name)
        metrics = model.meta["metrics"]
        assert metrics["val_mse"] < metrics["persistence_val_mse"], name
        assert sum(f.stat().st_size for f in (shipped_models_dir() / name).iterdir()) < 300_000, name
        assert f"| `{name}` |" in doc, f"{name} has no row in docs/models.md"
        x = torch.randn(4, 2, FEATURES)
        mean, logvar, h = model.network.step(x, torch.zeros(4, model.network.state_size(2)))
        assert torch.isfinite(mean).all() and torch.isfinite(logvar).all()


@pytest.mark.parametrize("name", ["gru-default", "lstm-default", "rnn-prelu", "encdec-default", "bidir-default"])
def test_shipped_models_alert_on_a_shift_and_stay_quiet_before_it(name):
    """Each architecture's shipped weights, through the engine: a clean signal raises nothing; a 6 σ shift does."""
    from detector.alerts import AlertKind

    rng = np.random.default_rng(11)
    t = np.arange(1500)
    values = (10 + np.sin(t / 15.0) + 0.1 * rng.standard_normal(1500))[:, None]
    values[1200:] += 6 * 0.7  # the signal's std is about 0.7
    r = Detector(name, channels=1).score_arrays(["s"] * 1500, t.astype(float), values)
    raised = [e.ts for e in r.events if e.kind is AlertKind.RAISE]
    assert raised, name
    assert 1200 <= raised[0] < 1230, (name, raised)
