"""Recurrent forecasters whose weights are shared by every sensor.

A network predicts each channel's next normalised value, and its uncertainty,
from the current one. Channels are modelled independently with one set of
weights (each channel is a "lane"), so one model serves sensors with any number
of channels, and a univariate sensor costs only `layers * hidden` floats of state.

Every network offers two equal ways to run:
- `step(x, h)`: one reading for many sensors at once, as the engine calls it;
- `forward(x, h)`: whole sequences, as training calls it.
A test holds them equal.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detector.errors import ModelError

FEATURES = 2
"""Inputs per lane: the normalised value and the log time-delta feature."""

LOGVAR_MIN, LOGVAR_MAX = -8.0, 6.0


class GRUForecaster(nn.Module):
    """A stacked GRU with a Gaussian head: next value = input + predicted change, with a log-variance.

    The residual connection makes "no change" the starting point, which is a
    strong forecast for most sensors and lets a small network learn the rest.
    """

    architecture = "gru"

    def __init__(self, hidden_size: int = 32, layers: int = 1) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = layers
        self.rnn = nn.GRU(FEATURES, hidden_size, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 2)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "hidden_size": self.hidden_size, "layers": self.layers}

    def state_size(self, channels: int) -> int:
        """Floats of hidden state per sensor with `channels` channels."""
        return channels * self.layers * self.hidden_size

    def _head(self, top: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(top)
        mean = z + out[..., 0]
        logvar = out[..., 1].clamp(LOGVAR_MIN, LOGVAR_MAX)
        return mean, logvar

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run lanes over whole sequences.

        x: [lanes, T, FEATURES]; h: [layers, lanes, hidden] or None.
        Returns (mean [lanes, T], logvar [lanes, T], h_T).
        """
        top, h_n = self.rnn(x, h)
        mean, logvar = self._head(top, x[..., 0])
        return mean, logvar, h_n

    @torch.no_grad()
    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance many sensors by one reading.

        x: [n, channels, FEATURES]; h: [n, state_size(channels)] laid out as (channel, layer, hidden).
        Returns (mean [n, channels], logvar [n, channels], new h [n, state_size]).
        """
        n, channels, _ = x.shape
        lanes = x.reshape(n * channels, FEATURES)
        state = h.reshape(n * channels, self.layers, self.hidden_size)
        new_state = torch.empty_like(state)
        inp = lanes
        for layer in range(self.layers):
            inp = torch._VF.gru_cell(
                inp,
                state[:, layer],
                getattr(self.rnn, f"weight_ih_l{layer}"),
                getattr(self.rnn, f"weight_hh_l{layer}"),
                getattr(self.rnn, f"bias_ih_l{layer}"),
                getattr(self.rnn, f"bias_hh_l{layer}"),
            )
            new_state[:, layer] = inp
        mean, logvar = self._head(inp, lanes[:, 0])
        return mean.reshape(n, channels), logvar.reshape(n, channels), new_state.reshape(n, -1)


ARCHITECTURES: dict[str, type[nn.Module]] = {"gru": GRUForecaster}


def build_network(hyperparameters: dict[str, Any]) -> GRUForecaster:
    """Instantiate a network from the hyperparameters stored in a model directory."""
    params = dict(hyperparameters)
    arch = params.pop("architecture", None)
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[arch](**params)
    except TypeError as exc:
        raise ModelError(f"bad hyperparameters for {arch}: {exc}") from None
