"""Fitting a forecaster on history with truncated backpropagation through time.

Histories are first turned into exactly the features the engine feeds the
network (the same `normalise.observe`, step by step), with the target of each
step being the next reading in the frame the engine compares it in. The
network is then trained on chunks of `k` steps per lane with the hidden state
carried from chunk to chunk and detached (TBPTT with k1 = k2 = k), minimising
the Gaussian negative log-likelihood of the next value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detector import normalise
from detector.model_store import Model
from detector.networks import GRUForecaster


@dataclass
class TrainConfig:
    hidden_size: int = 32
    layers: int = 1
    chunk: int = 64
    epochs: int = 8
    batch_lanes: int = 128
    lr: float = 3e-3
    clip: float = 1.0
    val_fraction: float = 0.1
    norm_window: float = 500.0
    seed: int = 0


def prepare(ts: np.ndarray, values: np.ndarray, norm_window: float) -> tuple[np.ndarray, np.ndarray]:
    """Features [lanes, T-1, 2] and targets [lanes, T-1] from histories.

    ts: [T, n] or [T] seconds; values: [T, n, C] or [T, n]. Each (sensor, channel) becomes a lane.
    """
    if values.ndim == 2:
        values = values[:, :, None]
    steps, n, channels = values.shape
    ts = np.broadcast_to(ts.reshape(steps, -1), (steps, n))
    mean = np.zeros((n, channels))
    var = np.zeros((n, channels), dtype=np.float32)
    dt_mean = np.zeros(n, dtype=np.float32)
    feats = np.zeros((steps, n, channels, 2), dtype=np.float32)
    targets = np.zeros((steps, n, channels), dtype=np.float32)
    for t in range(steps):
        count = np.full(n, t, dtype=np.int32)
        dt = ts[t] - ts[t - 1] if t else np.zeros(n)
        z, tfeat, mean, var, dt_mean = normalise.observe(mean, var, dt_mean, count, values[t], dt, norm_window)
        feats[t, :, :, 0] = z
        feats[t, :, :, 1] = tfeat[:, None]
        if t + 1 < steps:
            std = normalise.scale(mean, var)
            targets[t] = np.clip((values[t + 1] - mean) / std, -normalise.Z_CLIP, normalise.Z_CLIP)
    lanes_x = feats[:-1].transpose(1, 2, 0, 3).reshape(n * channels, steps - 1, 2)
    lanes_y = targets[:-1].transpose(1, 2, 0).reshape(n * channels, steps - 1)
    return lanes_x, lanes_y


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logvar + (target - mean) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi)).mean()


def train(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    name: str = "trained",
    progress: Callable[[int, int, float, float], None] | None = None,
) -> tuple[Model, dict[str, float]]:
    """Train a GRU forecaster on prepared lanes; returns the model and its metrics.

    Early stopping keeps the epoch with the lowest validation loss. `progress`
    is called after each epoch with (epoch, epochs, train loss, validation loss).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    lanes = rng.permutation(x.shape[0])
    n_val = max(1, int(len(lanes) * config.val_fraction))
    val, tr = lanes[:n_val], lanes[n_val:]
    net = GRUForecaster(config.hidden_size, config.layers)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    best = (math.inf, None, 0)
    started = time.perf_counter()
    history = []
    for epoch in range(1, config.epochs + 1):
        net.train()
        order = rng.permutation(tr)
        losses = []
        for b in range(0, len(order), config.batch_lanes):
            idx = torch.from_numpy(order[b : b + config.batch_lanes])
            h = None
            for c in range(0, x.shape[1], config.chunk):
                xb, yb = xt[idx, c : c + config.chunk], yt[idx, c : c + config.chunk]
                mean, logvar, h = net(xb, h)
                loss = gaussian_nll(mean, logvar, yb)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), config.clip)
                opt.step()
                h = h.detach()
                losses.append(loss.item())
        val_loss = evaluate(net, xt[torch.from_numpy(val)], yt[torch.from_numpy(val)])
        history.append(val_loss)
        if progress:
            progress(epoch, config.epochs, float(np.mean(losses)), val_loss)
        if val_loss < best[0]:
            best = (val_loss, {k: v.clone() for k, v in net.state_dict().items()}, epoch)
    net.load_state_dict(best[1])
    net.eval()
    metrics = {
        "val_nll": round(best[0], 5),
        "best_epoch": best[2],
        "persistence_val_mse": round(float(((yt[val] - xt[val][:, :, 0]) ** 2).mean()), 5),
        "val_mse": round(_mse(net, xt[torch.from_numpy(val)], yt[torch.from_numpy(val)]), 5),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return Model(name=name, network=net), metrics


@torch.no_grad()
def evaluate(net: GRUForecaster, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    mean, logvar, _ = net(x)
    return float(gaussian_nll(mean, logvar, y))


@torch.no_grad()
def _mse(net: GRUForecaster, x: torch.Tensor, y: torch.Tensor) -> float:
    mean, _, _ = net(x)
    return float(((mean - y) ** 2).mean())
