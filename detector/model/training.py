"""Fitting a network on history with truncated backpropagation through time.

Histories are first turned into exactly the features the engine feeds the network (the same
`normalise.observe`, step by step, in `prepare`), with the target of each step being the next
reading in the frame the engine compares it in. Lanes of different lengths are padded at the end
and carry a length; a mask keeps padded steps (and, for networks that estimate an earlier reading,
steps whose target lies before the history) out of every loss and metric.

Training is TBPTT(k1, k2) (Williams & Peng): each lane's state is carried along its whole history;
every k1 steps the parameters are updated from the losses of those k1 steps, backpropagated
through the last k2 ≥ k1 steps. It is run window by window: the window of an update starts k2
steps before its end from a stored, detached state, so the first k2 − k1 steps of a window carry
gradient but no loss; the state k1 steps further on is stored for the next window. k1 = k2 is
plain chunking (each step forward once). The loss is the Gaussian negative log-likelihood of the
network's estimate (for `encdec`, of the reconstruction of its whole window).

A validation split of whole sensors is held out; each epoch is scored on it, the best epoch's
weights are kept, and training stops after `patience` epochs without improvement. After every
epoch a checkpoint (model, optimiser, epoch, best weights, history and RNG states) can be written
and a run resumed from it; a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from detector.scoring import normalise
from detector.errors import HiddenstateError
from detector.model.store import Model
from detector.model.networks import Network, build_network, masked_nll
from detector.settings import Settings

CHECKPOINT_FORMAT = 1


class TrainConfig(Settings):
    """How `hiddenstate train` fits a network: the `[train]` table, HIDDENSTATE_TRAIN_* variables, then flags."""

    table: ClassVar[str] = "train"
    env_prefix: ClassVar[str] = "HIDDENSTATE_TRAIN_"

    architecture: Literal["gru", "lstm", "rnn", "encdec", "bidir", "joint-gru"] = "gru"
    hidden_size: int = Field(32, ge=1)
    layers: int = Field(1, ge=1)
    activation: str = "tanh"  # rnn only
    negative_slope: float = 0.01  # rnn leaky_relu (fixed) and prelu (initial)
    window: int = Field(32, ge=1)  # encdec only
    lookahead: int = Field(4, ge=1)  # bidir only
    k1: int = Field(64, ge=1, description="TBPTT: steps between updates.")
    k2: int | None = Field(None, ge=1, description="TBPTT: steps backpropagated (>= k1; default k1).")
    epochs: int = Field(8, ge=1)
    batch_lanes: int = Field(128, ge=1)
    lr: float = Field(3e-3, ge=0)
    clip: float = Field(1.0, gt=0)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    patience: int = Field(3, ge=0, description="Epochs without a better validation loss before stopping (0: never).")
    norm_window: float = Field(500.0, gt=1, description="The engine's `norm_window` the inputs are normalised with;"
                               " `hiddenstate train` takes it from the [detector] settings, and the engine checks it"
                               " against the model's at load.")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.k2 is None:
            object.__setattr__(self, "k2", self.k1)
        if self.k2 < self.k1:
            raise ValueError(f"TBPTT needs 1 <= k1 <= k2, got k1={self.k1}, k2={self.k2}")
        return self

    def network_hyperparameters(self, channels: int = 1) -> dict[str, Any]:
        """The network's hyperparameters; `channels` (of the data) is one only for joint-gru, whose input it sizes."""
        hp: dict[str, Any] = {"architecture": self.architecture, "hidden_size": self.hidden_size, "layers": self.layers}
        if self.architecture == "joint-gru":
            hp["channels"] = channels
        if self.architecture == "rnn":
            hp["activation"] = self.activation
            if self.activation in ("leaky_relu", "prelu"):
                hp["negative_slope"] = self.negative_slope
        elif self.architecture == "encdec":
            hp["window"] = self.window
        elif self.architecture == "bidir":
            hp["lookahead"] = self.lookahead
        return hp


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    train_nll: float
    val_nll: float
    best_val_nll: float
    best_epoch: int
    seconds: float
    stopping: bool = False


class Callbacks:
    """Progress hooks of `train` (all optional)."""

    def start(self, first_epoch: int, epochs: int, batches: int) -> None:
        """Training (re)starts at `first_epoch`; each epoch has `batches` updates' worth of lane batches."""

    def batch(self, epoch: int, done: int, batches: int, loss: float) -> None:
        """A batch of lanes is done; `loss` is its mean NLL."""

    def epoch(self, report: EpochReport) -> None:
        """An epoch is done (its checkpoint is written)."""


def features(ts: np.ndarray, values: np.ndarray, norm_window: float) -> tuple[np.ndarray, np.ndarray]:
    """What the engine would feed the network, step by step: features [T, n, C, 2] and targets [T, n, C].

    ts: [T, n] or [T] seconds; values: [T, n, C] or [T, n]. The target of step t is reading t + 1 in the
    frame the engine compares it in (0 at the last step, which has none).
    """
    if values.ndim == 2:
        values = values[:, :, None]
    steps, n, channels = values.shape
    ts = np.broadcast_to(ts.reshape(steps, -1), (steps, n))
    mean = np.zeros((n, channels))
    var = np.zeros((n, channels), dtype=np.float32)
    step = np.zeros((n, channels), dtype=np.float32)
    dt_mean = np.zeros(n, dtype=np.float32)
    feats = np.zeros((steps, n, channels, 2), dtype=np.float32)
    targets = np.zeros((steps, n, channels), dtype=np.float32)
    for t in range(steps):
        count = np.full(n, t, dtype=np.int32)
        dt = ts[t] - ts[t - 1] if t else np.zeros(n)
        prev = values[t - 1] if t else values[t]
        z, tfeat, mean, var, step, dt_mean = normalise.observe(
            mean, var, step, dt_mean, count, values[t], prev, dt, norm_window)
        feats[t, :, :, 0] = z
        feats[t, :, :, 1] = tfeat[:, None]
        if t + 1 < steps:
            std = normalise.scale(mean, var, step)
            targets[t] = np.clip((values[t + 1] - mean) / std, -normalise.Z_CLIP, normalise.Z_CLIP)
    return feats, targets


def prepare(ts: np.ndarray, values: np.ndarray, norm_window: float) -> tuple[np.ndarray, np.ndarray]:
    """Features [lanes, T-1, 2] and targets [lanes, T-1] from histories: each (sensor, channel) becomes a lane.

    ts: [T, n] or [T] seconds; values: [T, n, C] or [T, n].
    """
    feats, targets = features(ts, values, norm_window)
    steps, n, channels = targets.shape
    lanes_x = feats[:-1].transpose(1, 2, 0, 3).reshape(n * channels, steps - 1, 2)
    lanes_y = targets[:-1].transpose(1, 2, 0).reshape(n * channels, steps - 1)
    return lanes_x, lanes_y


def prepare_joint(ts: np.ndarray, values: np.ndarray, norm_window: float) -> tuple[np.ndarray, np.ndarray]:
    """Features [sensors, T-1, C, 2] and targets [sensors, T-1, C]: each sensor is ONE lane (for joint-gru)."""
    feats, targets = features(ts, values, norm_window)
    return np.ascontiguousarray(feats[:-1].transpose(1, 0, 2, 3)), np.ascontiguousarray(targets[:-1].transpose(1, 0, 2))


def pad_lanes(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack prepared (x [lanes, T_i, ...], y [lanes, T_i, ...]) of different lengths: zero-padded x, y and lengths.

    Works alike for channel lanes (x [lanes, T_i, 2]) and joint sensor lanes (x [lanes, T_i, C, 2]).
    """
    total = sum(x.shape[0] for x, _ in parts)
    longest = max(x.shape[1] for x, _ in parts)
    xs = np.zeros((total, longest, *parts[0][0].shape[2:]), dtype=np.float32)
    ys = np.zeros((total, longest, *parts[0][1].shape[2:]), dtype=np.float32)
    lengths = np.zeros(total, dtype=np.int64)
    row = 0
    for x, y in parts:
        lanes, steps = x.shape[:2]
        xs[row : row + lanes, :steps] = x
        ys[row : row + lanes, :steps] = y
        lengths[row : row + lanes] = steps
        row += lanes
    return xs, ys, lengths


def network_from_config(config: TrainConfig, x: np.ndarray | None = None) -> Network:
    """The untrained network of `config`, for prepared lanes `x` (a joint-gru is sized by their channels).

    joint-gru needs one lane per sensor (`prepare_joint`, x [sensors, T, C, 2]); the other architectures one per
    channel (`prepare`, x [lanes, T, 2]). A mismatch is a HiddenstateError, not a shape error deep in torch.
    """
    joint = config.architecture == "joint-gru"
    if x is not None and (x.ndim == 4) != joint:
        raise HiddenstateError(f"{config.architecture} trains on {'sensor' if joint else 'channel'} lanes: prepare"
                               f" them with {'prepare_joint' if joint else 'prepare'}")
    return build_network(config.network_hyperparameters(x.shape[2] if joint and x is not None else 1))


def targets_and_mask(
    x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor, target_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """What each step's output is compared with, and whether it counts.

    +1 (forecasters): `y`, the next reading, where the step is within the lane's length (the mask has y's shape).
    o ≤ 0: the input value of reading i + o (its own normalised value), where i < length and i + o ≥ 0.
    """
    steps = torch.arange(x.shape[1])
    valid = steps[None, :] < lengths[:, None]
    if target_offset == 1:
        # a joint lane's y is [lanes, T, channels]: a step counts for each of its channels
        return y, valid if y.dim() == 2 else valid[..., None].expand_as(y)
    if target_offset > 1:
        raise ValueError(f"target_offset {target_offset} is not supported")
    k = -target_offset
    target = torch.zeros_like(y)
    target[:, k:] = x[:, : x.shape[1] - k, 0]
    return target, valid & (steps >= k)[None, :]


def previous_value(x: torch.Tensor, target_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The "no change" estimate of each step's target: the value of the reading before it (and where it exists)."""
    shift = 1 - target_offset  # step i's target is reading i + offset; the one before it is i + offset - 1
    prev = torch.zeros_like(x[..., 0])
    prev[:, shift:] = x[:, : x.shape[1] - shift, ..., 0]
    exists = torch.zeros_like(prev, dtype=torch.bool)
    exists[:, shift:] = True
    return prev, exists


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logvar + (target - mean) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi)).mean()


def fit_terms(
    net: Network, x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, h: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL sum, count, state after x) of the training objective for one stretch of steps."""
    return net.fit_terms(x, target, mask, h)


def train(
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    name: str = "trained",
    callbacks: Callbacks | None = None,
    lengths: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    initial: Network | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Train the network `config` describes on prepared lanes; returns the model and its metrics.

    x [lanes, T, 2] and y [lanes, T] (zero-padded; for joint-gru x [sensors, T, C, 2] and y [sensors, T, C]);
    lengths: valid steps per lane (default all T);
    groups: the sensor of each lane, so a sensor's channels land on the same side of the validation
    split (default: each lane its own). checkpoint: file written after every epoch; with `resume`,
    training continues from it (it must come from the same config and data). initial: start from this network
    (trained in place; its architecture, not config's, is what is fitted) instead of a fresh one.
    """
    cb = callbacks or Callbacks()
    lanes_total, steps_total = x.shape[:2]
    lengths = np.full(lanes_total, steps_total, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
    groups = np.arange(lanes_total) if groups is None else np.asarray(groups)

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    val, tr = _split(groups, config.val_fraction, rng)
    net = network_from_config(config, x) if initial is None else initial.train()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
    lt = torch.from_numpy(lengths)
    target, mask = targets_and_mask(xt, yt, lt, net.target_offset)
    val_t = torch.from_numpy(val)

    fingerprint = _fingerprint(x, y, lengths, groups)
    best: dict[str, Any] = {"val": math.inf, "state": None, "epoch": 0}
    history: list[dict[str, float]] = []
    first_epoch, seconds_before, cpu_before = 1, 0.0, 0.0
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise HiddenstateError(f"no checkpoint to resume from at {checkpoint}")
        saved = torch.load(checkpoint, weights_only=True)
        _check_resumable(saved, config, fingerprint, checkpoint)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = json.loads(saved["numpy_rng"])
        torch.set_rng_state(saved["torch_rng"])
        best = {"val": saved["best_val"], "state": saved["best_model"], "epoch": saved["best_epoch"]}
        history = json.loads(saved["history"])
        first_epoch, seconds_before, cpu_before = saved["epoch"] + 1, saved["seconds"], saved["cpu_seconds"]

    batches = math.ceil(len(tr) / config.batch_lanes)
    cb.start(first_epoch, config.epochs, batches)
    started, cpu_started = time.perf_counter(), time.process_time()
    stopped_early = bool(history) and _should_stop(len(history), best["epoch"], config.patience) \
        and len(history) < config.epochs
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped_early:
            break
        epoch_started = time.perf_counter()
        net.train()
        order = rng.permutation(tr)
        total, count = 0.0, 0.0
        for b in range(batches):
            idx = torch.from_numpy(order[b * config.batch_lanes : (b + 1) * config.batch_lanes])
            s, c = _train_lanes(net, opt, config, xt[idx], target[idx], mask[idx], int(lt[idx].max()))
            total, count = total + s, count + c
            cb.batch(epoch, b + 1, batches, s / max(c, 1.0))
        val_loss = evaluate(net, xt[val_t], yt[val_t], lt[val_t])
        if val_loss < best["val"]:
            best = {"val": val_loss, "state": {k: v.clone() for k, v in net.state_dict().items()}, "epoch": epoch}
        history.append({"epoch": epoch, "train_nll": round(total / max(count, 1.0), 5), "val_nll": round(val_loss, 5)})
        stopped_early = _should_stop(epoch, best["epoch"], config.patience) and epoch < config.epochs
        seconds = (seconds_before + time.perf_counter() - started, cpu_before + time.process_time() - cpu_started)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, config, fingerprint, net, opt, rng, epoch, best, history, seconds)
        cb.epoch(EpochReport(epoch, config.epochs, total / max(count, 1.0), val_loss, best["val"], best["epoch"],
                             time.perf_counter() - epoch_started, stopped_early))
    if best["state"] is None:
        raise HiddenstateError("no epoch gave a finite validation loss (or epochs < 1); try a lower --lr")
    net.load_state_dict(best["state"])
    net.eval()
    xv, yv, lv = xt[val_t], yt[val_t], lt[val_t]
    metrics = {
        "val_nll": round(best["val"], 5),
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "persistence_val_mse": round(_persistence_mse(net, xv, yv, lv), 5),
        "val_mse": round(_mse(net, xv, yv, lv), 5),
        "train_seconds": round(seconds_before + time.perf_counter() - started, 1),
        "train_cpu_seconds": round(cpu_before + time.process_time() - cpu_started, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_lanes": int(len(tr)),
        "val_lanes": int(len(val)),
        "history": history,
    }
    return Model(name=name, network=net), metrics


def _train_lanes(
    net: Network, opt: torch.optim.Optimizer, config: TrainConfig,
    x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, steps: int,
) -> tuple[float, float]:
    """One batch of lanes through their whole (longest) history with TBPTT(k1, k2); returns (NLL sum, count)."""
    k1, k2 = config.k1, config.k2
    start_state = x.new_zeros(x.shape[0], net.state_per_lane)
    total, count = 0.0, 0.0
    end = 0
    while end < steps:
        first = end  # the loss counts steps [first, end)
        end = min(end + k1, steps)
        begin = max(0, end - k2)  # the window backpropagated: [begin, end)
        following = max(0, min(end + k1, steps) - k2)  # where the next window begins
        loss_mask = mask[:, begin:end].clone()
        loss_mask[:, : first - begin] = False
        # Forward [begin, following) first: the state there, detached, starts the next window.
        h = start_state
        parts = []
        if following > begin:
            parts.append(fit_terms(net, x[:, begin:following], target[:, begin:following],
                                   loss_mask[:, : following - begin], h))
            h = parts[-1][2]
        start_state = h.detach()
        if end > following:
            parts.append(fit_terms(net, x[:, following:end], target[:, following:end],
                                   loss_mask[:, following - begin :], h))
        s = sum(p[0] for p in parts)
        c = sum(p[1] for p in parts)
        if float(c) > 0:  # a window whose steps are all masked out teaches nothing
            loss = s / c
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), config.clip)
            opt.step()
            total += float(s.detach())
            count += float(c)
    return total, count


def _split(groups: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Validation and training lanes, whole groups (sensors) on one side, in a random order of groups."""
    unique, index = np.unique(groups, return_inverse=True)
    n_val = max(1, int(len(unique) * fraction))
    if n_val >= len(unique):
        raise HiddenstateError(f"{len(unique)} sensor(s) cannot be split into training and validation")
    rank = np.empty(len(unique), dtype=np.int64)
    rank[rng.permutation(len(unique))] = np.arange(len(unique))
    lanes = np.argsort(rank[index.reshape(-1)], kind="stable")
    held = rank[index.reshape(-1)][lanes] < n_val
    return lanes[held], lanes[~held]


def _should_stop(epoch: int, best_epoch: int, patience: int) -> bool:
    return patience > 0 and epoch - best_epoch >= patience


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(str((a.shape, a.dtype.str)).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _save_checkpoint(path: Path, config: TrainConfig, fingerprint: str, net: Network, opt: torch.optim.Optimizer,
                     rng: np.random.Generator, epoch: int, best: dict, history: list,
                     seconds: tuple[float, float]) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config.model_dump(), sort_keys=True),
        "data": fingerprint,
        "epoch": epoch,
        "seconds": seconds[0],  # wall clock
        "cpu_seconds": seconds[1],  # CPU time of this process
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "best_val": best["val"],
        "best_epoch": best["epoch"],
        "best_model": best["state"],
        "history": json.dumps(history),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)  # a crash while writing never leaves a half checkpoint


def _check_resumable(saved: dict, config: TrainConfig, fingerprint: str, path: Path) -> None:
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise HiddenstateError(
            f"{path} has checkpoint format {saved.get('format')!r}; this version reads {CHECKPOINT_FORMAT}"
        )
    then = json.loads(saved["config"])
    now = config.model_dump()
    then.pop("epochs", None)
    now.pop("epochs", None)  # a resumed run may be given more (or fewer) epochs
    if then != now:
        changed = sorted(k for k in now if then.get(k) != now[k])
        raise HiddenstateError(
            f"{path} was written with other settings ({', '.join(changed)}); resume with the same ones"
        )
    if saved["data"] != fingerprint:
        raise HiddenstateError(f"{path} was written for other training data; resume with the same data")


@torch.no_grad()
def evaluate(net: Network, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor | None = None) -> float:
    """Mean Gaussian NLL of the network's scored estimates over the counted steps."""
    net.eval()
    lengths = torch.full((x.shape[0],), x.shape[1]) if lengths is None else lengths
    target, mask = targets_and_mask(x, y, lengths, net.target_offset)
    mean, logvar, _ = net(x)
    total, count = masked_nll(mean, logvar, target, mask)
    return float(total / count.clamp(min=1))


@torch.no_grad()
def _mse(net: Network, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor) -> float:
    target, mask = targets_and_mask(x, y, lengths, net.target_offset)
    mean, _, _ = net(x)
    return float(((mean - target) ** 2)[mask].mean())


@torch.no_grad()
def _persistence_mse(net: Network, x: torch.Tensor, y: torch.Tensor, lengths: torch.Tensor) -> float:
    target, mask = targets_and_mask(x, y, lengths, net.target_offset)
    prev, exists = previous_value(x, net.target_offset)
    keep = mask & exists
    return float(((prev - target) ** 2)[keep].mean())
