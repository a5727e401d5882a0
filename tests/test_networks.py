"""Networks: stepping one reading at a time equals running whole sequences."""

from __future__ import annotations

import torch

from detector.networks import FEATURES, GRUForecaster


def test_step_equals_sequence():
    torch.manual_seed(0)
    net = GRUForecaster(hidden_size=6, layers=2).eval()
    channels, steps, sensors = 3, 17, 5
    x = torch.randn(sensors, channels, steps, FEATURES)
    with torch.no_grad():
        mean_seq, logvar_seq, _ = net(x.reshape(sensors * channels, steps, FEATURES))
    h = torch.zeros(sensors, net.state_size(channels))
    for t in range(steps):
        mean, logvar, h = net.step(x[:, :, t], h)
        torch.testing.assert_close(mean, mean_seq[:, t].reshape(sensors, channels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logvar, logvar_seq[:, t].reshape(sensors, channels), atol=1e-5, rtol=1e-5)


def test_hidden_state_carries_information():
    torch.manual_seed(1)
    net = GRUForecaster(hidden_size=6).eval()
    x = torch.randn(1, 1, FEATURES)
    zero = torch.zeros(1, net.state_size(1))
    _, _, h = net.step(torch.randn(1, 1, FEATURES), zero)
    a, _, _ = net.step(x, zero)
    b, _, _ = net.step(x, h)
    assert not torch.allclose(a, b)
