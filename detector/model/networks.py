"""Recurrent networks whose weights are shared by every sensor.

A network turns each channel's normalised readings into a Gaussian estimate (mean and
log-variance) of one normalised reading. Most networks model channels independently with one
set of weights (each channel is a "lane"), so one model serves sensors with any number of
channels, and a univariate sensor costs only `state_size(1)` floats of state. `joint-gru`
instead reads all of a sensor's channels at once (one lane per sensor, `per_sensor_lanes`),
for a channel set fixed when it is built, and still estimates every channel on its own.

Which reading the estimate is for is the network's `target_offset`, relative to the reading
just fed in at step t:

- `+1` (the forecasters `gru`, `lstm`, `rnn`): the NEXT reading, t + 1. The engine keeps the
  forecast and scores the next reading against it.
- `0` (`encdec`): the CURRENT reading t, reconstructed from the last `window` readings.
- `-k` (`bidir` with `lookahead` k): the reading t − k, estimated from the readings before it
  (forward state carried across messages) and the k after it (a backward pass over a ring
  buffer); its score is delayed by k readings.

The estimate is in the frame of that reading's own input feature: the normalisation
statistics as they were just before the target reading arrived (for +1 that is the frame after
the current reading, exactly as `training.prepare` builds its targets).

Every network offers two equal ways to run, and tests hold them equal:

- `step(x, h)`: one reading for many sensors at once, as the engine calls it;
  x [n, channels, FEATURES], h [n, state_size(channels)] → (mean [n, C], logvar [n, C], new h);
- `forward(x, h)`: whole sequences for many lanes, as training calls it;
  x [lanes, T, FEATURES], h [lanes, state_size(1)] or None (zeros) → (mean [lanes, T],
  logvar [lanes, T], h after the last step). Output t of `forward` is what `step` returns
  at reading t.

A state of zeros is a fresh start (the engine zeroes it for a new sensor and after a gap). The
layout inside a sensor's state row is (channel, then the network's own per-lane layout, given
by each class's docstring); only the network reads it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from detector.errors import ModelError

FEATURES = 2
"""Inputs per lane: the normalised value and the log time-delta feature."""

LOGVAR_MIN, LOGVAR_MAX = -8.0, 6.0

MAX_JOINT_CHANNELS = 32
"""The most channels a `joint-gru` model reads at once (its input grows with them)."""

ACTIVATIONS = ("tanh", "relu", "leaky_relu", "prelu")


class Network(nn.Module):
    """What every network shares: lanes, the packed state, and the Gaussian head.

    The head maps the top features to (change, log-variance); the estimate is `base + change`,
    where `base` is the "no change" estimate the subclass supplies (for a forecaster: the current
    value), so an untrained network already forecasts persistence and a small one learns the rest.

    Subclasses set `architecture`, `state_per_lane`, and implement `_step_lanes` (one reading,
    [lanes, FEATURES] and [lanes, state_per_lane]) and `_sequence` (whole sequences).
    """

    architecture: ClassVar[str] = ""
    target_offset: int = 1
    per_sensor_lanes: ClassVar[bool] = False
    """False: one lane per channel, x [lanes, T, FEATURES]; True (joint-gru): one lane per sensor,
    x [lanes, T, channels, FEATURES] and estimates [lanes, T, channels]."""

    def __init__(self, hidden_size: int, layers: int, head_inputs: int | None = None, outputs: int = 1) -> None:
        super().__init__()
        if hidden_size < 1 or layers < 1:
            raise ValueError("hidden_size and layers must be at least 1")
        self.hidden_size = int(hidden_size)
        self.layers = int(layers)
        self.head = nn.Linear(head_inputs or self.hidden_size, 2 * outputs)

    # -- the contract -------------------------------------------------------------------------

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Everything `build_network` needs to rebuild this network (stored in model.json)."""
        return {"architecture": self.architecture, "hidden_size": self.hidden_size, "layers": self.layers,
                **self._extra_hyperparameters()}

    @property
    def state_per_lane(self) -> int:
        raise NotImplementedError

    def state_size(self, channels: int) -> int:
        """Floats of state per sensor with `channels` channels."""
        return channels * self.state_per_lane

    @property
    def lookahead(self) -> int:
        """Readings that must follow a reading before it is scored (0 for forecasters and encdec)."""
        return max(0, -self.target_offset)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run lanes over whole sequences.

        x: [lanes, T, FEATURES]; h: [lanes, state_per_lane] or None (a fresh start).
        Returns (mean [lanes, T], logvar [lanes, T], state after the last step [lanes, state_per_lane]).
        """
        if h is None:
            h = x.new_zeros(x.shape[0], self.state_per_lane)
        return self._sequence(x, h)

    @torch.no_grad()
    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance many sensors by one reading.

        x: [n, channels, FEATURES]; h: [n, state_size(channels)].
        Returns (mean [n, channels], logvar [n, channels], new h [n, state_size(channels)]).
        """
        n, channels, _ = x.shape
        mean, logvar, state = self._step_lanes(
            x.reshape(n * channels, FEATURES), h.reshape(n * channels, self.state_per_lane)
        )
        return mean.reshape(n, channels), logvar.reshape(n, channels), state.reshape(n, -1)

    # -- for subclasses ----------------------------------------------------------------------

    def _extra_hyperparameters(self) -> dict[str, Any]:
        return {}

    def _step_lanes(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def fit_terms(
        self, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, h: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training objective over a stretch of steps: (NLL sum, count, state after x).

        Default: the NLL of each step's estimate against `target` where `mask`.
        """
        mean, logvar, h = self(x, h)
        total, count = masked_nll(mean, logvar, target, mask)
        return total, count, h

    def _gaussian(self, features: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head: estimate = base + predicted change, and a clamped log-variance."""
        out = self.head(features)
        if out.shape[-1] > 2:  # a joint head: one (change, log-variance) pair per channel, [..., channels, 2]
            out = out.unflatten(-1, (-1, 2))
        return base + out[..., 0], out[..., 1].clamp(LOGVAR_MIN, LOGVAR_MAX)


def masked_nll(
    mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the Gaussian negative log-likelihood over the masked-in elements, and their count."""
    nll = 0.5 * (logvar + (target - mean) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))
    return torch.where(mask, nll, torch.zeros_like(nll)).sum(), mask.to(nll.dtype).sum()


def _stack_step(
    rnn: nn.GRU | nn.LSTM, x: torch.Tensor, state: torch.Tensor, cell: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a torch GRU/LSTM stack from its own weights: x [lanes, in], state [lanes, layers, width]."""
    new = []
    inp = x
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        inp, layer_state = cell(inp, state[:, layer], weights)
        new.append(layer_state)
    return inp, torch.stack(new, dim=1)


def _gru_cell(x: torch.Tensor, h: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch._VF.gru_cell(x, h, *weights)
    return h, h


def _lstm_cell(x: torch.Tensor, hc: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    h, c = hc.chunk(2, dim=-1)
    h, c = torch._VF.lstm_cell(x, (h, c), *weights)
    return h, torch.cat([h, c], dim=-1)


# -- forecasters (target_offset +1) ---------------------------------------------------------------


class RecurrentForecaster(Network):
    """A stack of recurrent layers read by the head: forecasts the next value from the current one.

    Per-lane state: (layer, part, hidden), `parts` = 1 (h) for RNN and GRU, 2 (h, c) for LSTM.
    Subclasses provide the one-step stack (`_stack`) and the sequence run (`_layers_sequence`).
    """

    parts: ClassVar[int] = 1
    target_offset = 1

    @property
    def state_per_lane(self) -> int:
        return self.layers * self.parts * self.hidden_size

    def _stack(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [lanes, FEATURES], state [lanes, layers, parts*hidden] → (top output, new state)."""
        raise NotImplementedError

    def _layers_sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [lanes, T, FEATURES], state [lanes, layers, parts*hidden] → (top [lanes, T, hidden], last state)."""
        raise NotImplementedError

    def _per_layer(self, state: torch.Tensor) -> torch.Tensor:
        return state.reshape(state.shape[0], self.layers, self.parts * self.hidden_size)

    def _step_lanes(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top, new = self._stack(x, self._per_layer(state))
        mean, logvar = self._gaussian(top, x[:, 0])
        return mean, logvar, new.reshape(x.shape[0], -1)

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top, last = self._layers_sequence(x, self._per_layer(state))
        mean, logvar = self._gaussian(top, x[..., 0])
        return mean, logvar, last.reshape(x.shape[0], -1)


class GRUForecaster(RecurrentForecaster):
    """Stacked GRU forecaster (torch's fused GRU for sequences). Per-lane state: (layer, hidden)."""

    architecture = "gru"

    def __init__(self, hidden_size: int = 32, layers: int = 1) -> None:
        super().__init__(hidden_size, layers)
        self.rnn = nn.GRU(FEATURES, self.hidden_size, num_layers=self.layers, batch_first=True)

    def _stack(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _stack_step(self.rnn, x, state, _gru_cell)

    def _layers_sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top, h_n = self.rnn(x, state.transpose(0, 1).contiguous())
        return top, h_n.transpose(0, 1)


class LSTMForecaster(RecurrentForecaster):
    """Stacked LSTM forecaster (torch's fused LSTM for sequences). Per-lane state: (layer, [h, c], hidden)."""

    architecture = "lstm"
    parts = 2

    def __init__(self, hidden_size: int = 32, layers: int = 1) -> None:
        super().__init__(hidden_size, layers)
        self.rnn = nn.LSTM(FEATURES, self.hidden_size, num_layers=self.layers, batch_first=True)

    def _stack(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _stack_step(self.rnn, x, state, _lstm_cell)

    def _layers_sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h0, c0 = (s.transpose(0, 1).contiguous() for s in state.chunk(2, dim=-1))
        top, (h_n, c_n) = self.rnn(x, (h0, c0))
        return top, torch.cat([h_n, c_n], dim=-1).transpose(0, 1)


class RNNForecaster(RecurrentForecaster):
    """Stacked standard (Elman) RNN forecaster: h' = act(W_ih x + b_ih + W_hh h + b_hh).

    activation: tanh, relu, leaky_relu (fixed `negative_slope`) or prelu (a learned slope per layer
    and unit, starting at `negative_slope`). The cell is written here; the weights live in an
    `nn.RNN` (same names and layout as torch's), whose fused kernel runs sequences for tanh and
    relu (`fused`; set it False to run the hand-written loop, as leaky_relu and prelu always do).
    Per-lane state: (layer, hidden).
    """

    architecture = "rnn"

    def __init__(self, hidden_size: int = 32, layers: int = 1, activation: str = "tanh",
                 negative_slope: float = 0.01) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        super().__init__(hidden_size, layers)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.rnn = nn.RNN(FEATURES, self.hidden_size, num_layers=self.layers, batch_first=True,
                          nonlinearity="relu" if activation == "relu" else "tanh")
        if activation == "prelu":
            self.slope = nn.Parameter(torch.full((self.layers, self.hidden_size), self.negative_slope))
        self.fused = activation in ("tanh", "relu")

    def _extra_hyperparameters(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"activation": self.activation}
        if self.activation in ("leaky_relu", "prelu"):
            extra["negative_slope"] = self.negative_slope
        return extra

    def act(self, pre: torch.Tensor, layer: int) -> torch.Tensor:
        if self.activation == "tanh":
            return torch.tanh(pre)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "leaky_relu":
            return F.leaky_relu(pre, self.negative_slope)
        return torch.where(pre >= 0, pre, self.slope[layer] * pre)

    def _weights(self, layer: int) -> tuple[torch.Tensor, ...]:
        r = self.rnn
        return (getattr(r, f"weight_ih_l{layer}"), getattr(r, f"bias_ih_l{layer}"),
                getattr(r, f"weight_hh_l{layer}"), getattr(r, f"bias_hh_l{layer}"))

    def cell(self, layer: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The hand-written cell: one step of layer `layer`."""
        w_ih, b_ih, w_hh, b_hh = self._weights(layer)
        return self.act(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh), layer)

    def _stack(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = []
        inp = x
        for layer in range(self.layers):
            inp = self.cell(layer, inp, state[:, layer])
            new.append(inp)
        return inp, torch.stack(new, dim=1)

    def _layers_sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            top, h_n = self.rnn(x, state.transpose(0, 1).contiguous())
            return top, h_n.transpose(0, 1)
        # Layer by layer: the input projection of a whole sequence is one matmul, the loop only the recurrence.
        inp, last = x, []
        for layer in range(self.layers):
            w_ih, b_ih, w_hh, b_hh = self._weights(layer)
            projected = F.linear(inp, w_ih, b_ih)
            h = state[:, layer]
            outs = []
            for t in range(x.shape[1]):
                h = self.act(projected[:, t] + F.linear(h, w_hh, b_hh), layer)
                outs.append(h)
            inp = torch.stack(outs, dim=1) if outs else projected.new_zeros(x.shape[0], 0, self.hidden_size)
            last.append(h)
        return inp, torch.stack(last, dim=1)


# -- windowed networks (target_offset 0 and -k) ---------------------------------------------------


class EncoderDecoder(Network):
    """Encoder–decoder GRU: reconstructs the current reading from the last `window` readings.

    Per-lane state: a buffer of the last `window` inputs, oldest first, each (z, time feature,
    present) with present = 1 for a real reading (a fresh state is all absent). At each reading the
    buffer shifts by one; the encoder GRU reads the whole window into a context vector (its last
    hidden state); the decoder GRU, started from the context, reconstructs the window newest first
    from the time features and presence flags only (never from the values), so every value it
    reproduces went through the context bottleneck (make `hidden_size` smaller than `window`). The
    estimate of a position is its predecessor's value plus the decoded change ("no change" again).
    `step` and `forward` return the estimate of the newest position, the current reading
    (target_offset 0); `reconstruct` gives all positions, which training fits.
    """

    architecture = "encdec"
    target_offset = 0
    ENTRY = FEATURES + 1

    def __init__(self, hidden_size: int = 16, layers: int = 1, window: int = 32) -> None:
        super().__init__(hidden_size, layers)
        if window < 2:
            raise ValueError("window must be at least 2")
        self.window = int(window)
        self.encoder = nn.GRU(self.ENTRY, self.hidden_size, num_layers=self.layers, batch_first=True)
        self.decoder = nn.GRU(2, self.hidden_size, num_layers=self.layers, batch_first=True)

    def _extra_hyperparameters(self) -> dict[str, Any]:
        return {"window": self.window}

    @property
    def state_per_lane(self) -> int:
        return self.window * self.ENTRY

    @staticmethod
    def _entries(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)

    def _base(self, windows: torch.Tensor) -> torch.Tensor:
        """"No change" for every position: the value before it (0 where there is none)."""
        prev = windows[:, :-1, 0] * windows[:, :-1, 2]
        return torch.cat([prev.new_zeros(prev.shape[0], 1), prev], dim=1)

    def reconstruct(self, windows: torch.Tensor, newest_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """windows [B, window, 3] (oldest first) → (mean, logvar) [B, window], or [B] with newest_only."""
        _, context = self.encoder(windows)
        queries = windows[:, :, 1:].flip(1)  # newest first: (time feature, present) of the position decoded
        if newest_only:
            queries = queries[:, :1]
        decoded, _ = self.decoder(queries, context)
        if newest_only:
            return self._gaussian(decoded[:, 0], self._base(windows)[:, -1])
        mean, logvar = self._gaussian(decoded.flip(1), self._base(windows))
        return mean, logvar

    def windows(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window seen at each step: ([lanes, T, window, 3], the buffer after the last step)."""
        lanes, steps = x.shape[:2]
        stream = torch.cat([state.reshape(lanes, self.window, self.ENTRY), self._entries(x)], dim=1)
        wins = stream[:, 1:].unfold(1, self.window, 1).transpose(-1, -2)
        return wins, stream[:, steps:]

    def fit_terms(
        self, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, h: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training fits the reconstruction of every present position of the window of every counted step."""
        lanes, steps = x.shape[:2]
        h = x.new_zeros(lanes, self.state_per_lane) if h is None else h
        wins, buffer = self.windows(x, h)
        flat = wins.reshape(lanes * steps, self.window, self.ENTRY)
        mean, logvar = self.reconstruct(flat)
        keep = (flat[..., 2] > 0) & mask.reshape(lanes * steps, 1)
        total, count = masked_nll(mean, logvar, flat[..., 0], keep)
        return total, count, buffer.reshape(lanes, -1)

    def _step_lanes(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        wins, buffer = self.windows(x[:, None], state)
        mean, logvar = self.reconstruct(wins[:, 0], newest_only=True)
        return mean, logvar, buffer.reshape(x.shape[0], -1)

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lanes, steps = x.shape[:2]
        wins, buffer = self.windows(x, state)
        mean, logvar = self.reconstruct(wins.reshape(lanes * steps, self.window, self.ENTRY), newest_only=True)
        return mean.reshape(lanes, steps), logvar.reshape(lanes, steps), buffer.reshape(lanes, -1)


class BidirectionalGRU(Network):
    """Bidirectional GRU with a look-ahead of k readings: scores reading t − k at step t.

    Per-lane state: the forward GRU's hidden state (layer, hidden), then a buffer of the last k + 1
    inputs (oldest first). At each reading the buffer shifts: the input leaving it (reading t − k − 1)
    advances the forward GRU, which therefore summarises every reading before the target t − k,
    carried across messages; the backward GRU runs from zero over the k readings after the target
    (t, t − 1, …, t − k + 1). The head reads both; "no change" is the mean of the target's two
    neighbours (the previous one alone when k = 0). The target reading itself is never an input to
    its own estimate, and no reading after t is. The first k outputs after a fresh state refer to
    readings before the first one and must be ignored.
    """

    architecture = "bidir"

    def __init__(self, hidden_size: int = 32, layers: int = 1, lookahead: int = 4) -> None:
        super().__init__(hidden_size, layers, head_inputs=2 * hidden_size)
        if lookahead < 0:
            raise ValueError("lookahead must be at least 0")
        self.k = int(lookahead)
        self.target_offset = -self.k
        self.forward_rnn = nn.GRU(FEATURES, self.hidden_size, num_layers=self.layers, batch_first=True)
        self.backward_rnn = nn.GRU(FEATURES, self.hidden_size, num_layers=self.layers, batch_first=True)

    def _extra_hyperparameters(self) -> dict[str, Any]:
        return {"lookahead": self.k}

    @property
    def state_per_lane(self) -> int:
        return self.layers * self.hidden_size + (self.k + 1) * FEATURES

    def _split(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lanes, cut = state.shape[0], self.layers * self.hidden_size
        return (state[:, :cut].reshape(lanes, self.layers, self.hidden_size),
                state[:, cut:].reshape(lanes, self.k + 1, FEATURES))

    def _backward(self, future: torch.Tensor) -> torch.Tensor:
        """future [B, k, FEATURES] (oldest first) → the backward GRU's top hidden state [B, hidden]."""
        if self.k == 0:
            return future.new_zeros(future.shape[0], self.hidden_size)
        _, h_n = self.backward_rnn(future.flip(1))
        return h_n[-1]

    def _estimate(self, fwd: torch.Tensor, bwd: torch.Tensor, before: torch.Tensor, after: torch.Tensor | None):
        base = before if after is None else 0.5 * (before + after)
        return self._gaussian(torch.cat([fwd, bwd], dim=-1), base)

    def _step_lanes(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden, buffer = self._split(state)
        leaving = buffer[:, 0]
        fwd, hidden = _stack_step(self.forward_rnn, leaving, hidden, _gru_cell)
        buffer = torch.cat([buffer[:, 1:], x[:, None]], dim=1)
        future = buffer[:, 1:]
        mean, logvar = self._estimate(fwd, self._backward(future), leaving[:, 0],
                                      future[:, 0, 0] if self.k else None)
        return mean, logvar, torch.cat([hidden.reshape(x.shape[0], -1), buffer.reshape(x.shape[0], -1)], dim=1)

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lanes, steps = x.shape[:2]
        hidden, buffer = self._split(state)
        stream = torch.cat([buffer, x], dim=1)  # stream[i] leaves at step i; stream[i + 1] is its target
        fwd, h_n = self.forward_rnn(stream[:, :steps], hidden.transpose(0, 1).contiguous())
        if self.k:
            future = stream[:, 2:].unfold(1, self.k, 1).transpose(-1, -2)  # [lanes, T, k, FEATURES]
            bwd = self._backward(future.reshape(lanes * steps, self.k, FEATURES)).reshape(lanes, steps, -1)
            after = stream[:, 2 : 2 + steps, 0]
        else:
            bwd, after = fwd.new_zeros(lanes, steps, self.hidden_size), None
        mean, logvar = self._estimate(fwd, bwd, stream[:, :steps, 0], after)
        last = torch.cat([h_n.transpose(0, 1).reshape(lanes, -1), stream[:, steps:].reshape(lanes, -1)], dim=1)
        return mean, logvar, last


# -- a forecaster over all of a sensor's channels at once ------------------------------------------


class JointGRUForecaster(Network):
    """A GRU that reads all of a sensor's channels at once: one lane per sensor, a fixed channel set.

    Channel-independent networks cannot see that two channels move together; this one can: at each
    reading its input is every channel's features ([channels × FEATURES], channel-major), its hidden
    state is one per sensor, and its head gives each channel its own (change, log-variance), so the
    estimate is still per channel ("no change" = each channel's current value, plus the change) and the
    engine's views and the forecast view's choice of channel work unchanged. The channel count is fixed
    when it is built (1…`MAX_JOINT_CHANNELS`) and `state_size` refuses any other with a ModelError, so an
    engine for sensors with another count fails at its construction. Channel ORDER matters too: the
    model's `channel_names` in model.json (when trained on named columns) say which (see store.py).
    Per-sensor state: (layer, hidden), not per channel.
    """

    architecture = "joint-gru"
    target_offset = 1
    per_sensor_lanes = True

    def __init__(self, hidden_size: int = 32, layers: int = 1, channels: int = 2) -> None:
        if not 1 <= channels <= MAX_JOINT_CHANNELS:
            raise ValueError(f"channels must be 1 to {MAX_JOINT_CHANNELS}, not {channels}")
        super().__init__(hidden_size, layers, outputs=channels)
        self.channels = int(channels)
        self.rnn = nn.GRU(self.channels * FEATURES, self.hidden_size, num_layers=self.layers, batch_first=True)

    def _extra_hyperparameters(self) -> dict[str, Any]:
        return {"channels": self.channels}

    @property
    def state_per_lane(self) -> int:
        return self.layers * self.hidden_size

    def state_size(self, channels: int) -> int:
        """Floats of state per sensor; ModelError unless `channels` is the count the model was built for."""
        if channels != self.channels:
            raise ModelError(
                f"this {self.architecture} model reads exactly {self.channels} channel(s) per sensor, not {channels}:"
                f" score sensors with its {self.channels} channels in its order (model.json channel_names), train"
                f" one for these (hiddenstate train --arch {self.architecture}) or use a channel-independent model"
                " (gru-default)")
        return self.state_per_lane

    @torch.no_grad()
    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance many sensors by one reading: x [n, channels, FEATURES], h [n, state_size(channels)]."""
        self.state_size(x.shape[1])
        return self._step_lanes(x, h)

    def _step_lanes(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        top, new = _stack_step(self.rnn, x.reshape(n, -1), state.reshape(n, self.layers, self.hidden_size),
                               _gru_cell)
        mean, logvar = self._gaussian(top, x[..., 0])
        return mean, logvar, new.reshape(n, -1)

    def _sequence(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lanes = x.shape[0]
        h0 = state.reshape(lanes, self.layers, self.hidden_size).transpose(0, 1).contiguous()
        top, h_n = self.rnn(x.flatten(2), h0)
        mean, logvar = self._gaussian(top, x[..., 0])
        return mean, logvar, h_n.transpose(0, 1).reshape(lanes, -1)


ARCHITECTURES: dict[str, type[Network]] = {
    cls.architecture: cls for cls in (GRUForecaster, LSTMForecaster, RNNForecaster, EncoderDecoder, BidirectionalGRU,
                                      JointGRUForecaster)
}


def build_network(hyperparameters: dict[str, Any]) -> Network:
    """Instantiate a network from the hyperparameters stored in a model directory."""
    params = dict(hyperparameters)
    arch = params.pop("architecture", None)
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[arch](**params)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"bad hyperparameters for {arch}: {exc}") from None
