"""The forecasters' one-step cells (GRU, LSTM, RNN) as numba code over float32 weights copied from torch.

`NetWeights.of(network)` packs a forecaster's weights into one flat float32 array (`packed`) with the sizes
in `shape`; `lane_step` advances one lane (one channel of one sensor) by one reading, exactly as the
network's `_step_lanes` does for one row, and writes the new state in place.

Weights are copied, so they go stale when the torch module's parameters change (`Engine.adopt`, online
learning, `load_state_dict`): `NetWeights.key(network)` is the parameters' in-place version counters, and
the fast path repacks whenever it moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from detector.fastpath.compiled import compiled
from detector.model.networks import FEATURES, LOGVAR_MAX, LOGVAR_MIN, GRUForecaster, LSTMForecaster, Network, \
    RNNForecaster

GRU, LSTM, RNN_TANH, RNN_RELU, RNN_LEAKY, RNN_PRELU = range(6)
"""Cell kinds (`shape[0]`)."""

def work_size(hidden: int) -> int:
    """Scratch floats `lane_step` needs for `hidden` units."""
    return max(hidden, FEATURES) + 8 * hidden


_GATES = {GRU: 3, LSTM: 4}  # rows of weight_ih per hidden unit; 1 for the RNNs
_RNN_KINDS = {"tanh": RNN_TANH, "relu": RNN_RELU, "leaky_relu": RNN_LEAKY, "prelu": RNN_PRELU}


def kind_of(network: Network) -> int | None:
    """The cell kind of a forecaster the fast path can run, else None (encdec, bidir, anything else)."""
    if type(network) is GRUForecaster:
        return GRU
    if type(network) is LSTMForecaster:
        return LSTM
    if type(network) is RNNForecaster:
        return _RNN_KINDS.get(network.activation)
    return None


@dataclass(frozen=True)
class NetWeights:
    """A forecaster's weights as one flat float32 array, and its shape: (kind, layers, hidden, gates, parts).

    Layout of `packed`, per layer: weight_ih [gates·H, in] (in = FEATURES for layer 0, else H), weight_hh
    [gates·H, H], bias_ih, bias_hh [gates·H], then the PReLU slopes [H] (RNN_PRELU only); after the layers the
    head's weight [2, H] and bias [2].
    """

    packed: np.ndarray
    shape: np.ndarray  # int64: kind, layers, hidden, gates, parts
    slope: float  # leaky_relu's negative slope

    @staticmethod
    def key(parameters: list[torch.Tensor]) -> tuple[int, ...]:
        """Changes whenever any of `parameters` is changed in place (torch's version counters), as
        `load_state_dict` and optimiser steps do."""
        return tuple(p._version for p in parameters)

    @classmethod
    def of(cls, network: Network) -> NetWeights:
        kind = kind_of(network)
        if kind is None:
            raise ValueError(f"no fast cell for {type(network).__name__}")
        gates, parts = _GATES.get(kind, 1), 2 if kind == LSTM else 1
        rnn = network.rnn  # type: ignore[attr-defined]
        pieces = []
        with torch.no_grad():
            for layer in range(network.layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    pieces.append(getattr(rnn, f"{name}_l{layer}").detach().reshape(-1))
                if kind == RNN_PRELU:
                    pieces.append(network.slope[layer].detach().reshape(-1))  # type: ignore[attr-defined]
            pieces += [network.head.weight.detach().reshape(-1), network.head.bias.detach().reshape(-1)]
            packed = torch.cat(pieces).to(torch.float32).numpy().copy()
        shape = np.array([kind, network.layers, network.hidden_size, gates, parts], dtype=np.int64)
        return cls(packed, shape, float(getattr(network, "negative_slope", 0.01)))


@compiled(inline="always")
def _sigmoid(v: float) -> np.float32:
    return np.float32(1.0 / (1.0 + math.exp(-v)))


@compiled()
def lane_step(packed: np.ndarray, shape: np.ndarray, slope: float, x0: np.float32, x1: np.float32,
              state: np.ndarray, work: np.ndarray) -> tuple[np.float32, np.float32]:
    """One reading of one lane: inputs (x0, x1), `state` [layers·parts·H] updated in place; returns the
    estimate (x0 + the head's change) and the clamped log-variance. `work` is scratch of at least `work_size(H)` floats."""
    kind, layers, hidden, gates = shape[0], shape[1], shape[2], shape[3]
    parts = shape[4]
    rows = gates * hidden
    top = max(hidden, FEATURES)
    inp = work[:top]  # the layer's input (the previous layer's new h)
    inp[0] = x0
    inp[1] = x1
    width = FEATURES
    pre_i = work[top:top + rows]  # gate pre-activations from the input ...
    pre_h = work[top + rows:top + 2 * rows]  # ... and from the state (GRU keeps them apart)
    at = 0
    for layer in range(layers):
        w_ih = packed[at:at + rows * width]
        at += rows * width
        w_hh = packed[at:at + rows * hidden]
        at += rows * hidden
        b_ih = packed[at:at + rows]
        at += rows
        b_hh = packed[at:at + rows]
        at += rows
        h = state[layer * parts * hidden:layer * parts * hidden + hidden]
        for r in range(rows):
            acc_i = float(b_ih[r])  # float64 sums: closer to torch's float32 matmuls than float32 sums are
            for k in range(width):
                acc_i += float(w_ih[r * width + k]) * inp[k]
            acc_h = float(b_hh[r])
            for k in range(hidden):
                acc_h += float(w_hh[r * hidden + k]) * h[k]
            pre_i[r] = acc_i
            pre_h[r] = acc_h
        if kind == GRU:  # torch's gate order: reset, update, new
            for j in range(hidden):
                r_gate = _sigmoid(pre_i[j] + pre_h[j])
                z_gate = _sigmoid(pre_i[hidden + j] + pre_h[hidden + j])
                n_gate = np.float32(math.tanh(pre_i[2 * hidden + j] + r_gate * pre_h[2 * hidden + j]))
                h[j] = (np.float32(1.0) - z_gate) * n_gate + z_gate * h[j]
        elif kind == LSTM:  # input, forget, cell, output; the state holds h then c
            c = state[layer * parts * hidden + hidden:(layer + 1) * parts * hidden]
            for j in range(hidden):
                i_gate = _sigmoid(pre_i[j] + pre_h[j])
                f_gate = _sigmoid(pre_i[hidden + j] + pre_h[hidden + j])
                g_gate = np.float32(math.tanh(pre_i[2 * hidden + j] + pre_h[2 * hidden + j]))
                o_gate = _sigmoid(pre_i[3 * hidden + j] + pre_h[3 * hidden + j])
                c[j] = f_gate * c[j] + i_gate * g_gate
                h[j] = o_gate * np.float32(math.tanh(c[j]))
        else:
            slopes = packed[at:at + hidden]
            if kind == RNN_PRELU:
                at += hidden
            for j in range(hidden):
                v = np.float32(pre_i[j] + pre_h[j])
                if kind == RNN_TANH:
                    v = np.float32(math.tanh(v))
                elif kind == RNN_RELU:
                    v = max(v, np.float32(0.0))
                elif v < 0:
                    v = v * (slopes[j] if kind == RNN_PRELU else np.float32(slope))
                h[j] = v
        for j in range(hidden):
            inp[j] = h[j]
        width = hidden
    head_w = packed[at:at + 2 * hidden]
    head_b = packed[at + 2 * hidden:at + 2 * hidden + 2]
    change, logvar = float(head_b[0]), float(head_b[1])
    for j in range(hidden):
        change += float(head_w[j]) * inp[j]
        logvar += float(head_w[hidden + j]) * inp[j]
    change, logvar = np.float32(change), np.float32(logvar)
    return np.float32(x0 + change), np.float32(min(max(logvar, LOGVAR_MIN), LOGVAR_MAX))
