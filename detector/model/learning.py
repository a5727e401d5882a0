"""Online adaptation: the shared weights keep learning from the stream they score (`learning = "online"`).

A bounded sample of the fleet is tracked: the first `learning_sensors` sensors seen (a slot freed by
eviction goes to the next new sensor). For each, the learner keeps the network's inputs of its last
`burn_in + window + 1` readings, exactly as the engine fed them, and whether each reading may be
learnt from: readings that scored anomalous, or came while the sensor's alert was open, are left out,
so a fault is not learnt as normal while it lasts. A reset (a new sensor, a long gap) starts its lane
afresh.

Every `learning_every` readings per tracked sensor (on average), one truncated-BPTT update runs on a
private copy of the network: every tracked lane from a zero state over its buffer, the first `burn_in`
steps warming the state without loss, the Gaussian NLL of the next `window` forecasts (training.py's
objective) backpropagated through them, gradients clipped. The engine copies the new weights in
between batches (`update`), so a batch is scored by one weights version throughout; the sensors'
hidden states are kept across versions (a small learning rate moves the weights little per update).

In the Kafka service the learner publishes instead (`publish = True`): an update leaves the engine's
weights alone and hands a `WeightsVersion` out (`published`), which the service writes to the weights
topic; every instance, this one included, adopts it from there (`adopt`), so a consumer group scores
with one version. Only one instance learns at a time (`active`).

Forecasters only (gru, lstm, rnn, joint-gru): a look-ahead or reconstruction model's targets are not the
next reading. A channel-independent network learns from one lane per tracked sensor and channel, joint-gru
from one lane per tracked sensor (all its channels at once).
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch

from detector.config import DetectorConfig
from detector.errors import ModelError
from detector.model.networks import FEATURES, Network, masked_nll
from detector.model.versions import WeightsVersion

MIN_TARGETS = 32
"""An update needs at least this many forecasts that may be learnt from; fewer and it waits."""


@dataclass
class LearningStats:
    """What the learner did: updates applied and skipped, readings kept and left out, seconds spent."""

    updates: int = 0
    skipped: int = 0  # updates with a non-finite loss, dropped
    kept: int = 0
    left_out: int = 0
    seconds: float = 0.0
    last_loss: float = float("nan")


class OnlineLearner:
    """Learns the shared weights from a tracked sample of the stream; see the module docstring."""

    def __init__(self, network: Network, channels: int, config: DetectorConfig, window: int = 64, burn_in: int = 32,
                 clip: float = 1.0, base: str = "") -> None:
        if network.target_offset != 1:
            raise ModelError(f"learning = online needs a forecaster (gru, lstm, rnn, joint-gru), not "
                             f"{network.architecture}: set learning = off for this model")
        self.net = copy.deepcopy(network).train()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.learning_rate)
        self.channels, self.every, self.burn_in, self.clip = channels, config.learning_every, burn_in, clip
        sensors = config.learning_sensors
        length = burn_in + window + 1
        self.inputs = np.zeros((sensors, length, channels, FEATURES), dtype=np.float32)
        self.keep = np.zeros((sensors, length), dtype=bool)
        self.valid = np.zeros((sensors, length), dtype=bool)  # the reading is since the lane's last reset
        self.lane_of_slot = np.full(0, -1, dtype=np.int64)
        self.lanes_used = 0
        self.pending = 0
        self.version = 0
        """Weights version: 0 for the loaded weights, +1 for each update (from the newest version adopted)."""
        self.stats = LearningStats()
        self.base = base  # the loaded model's weights hash, stamped on published versions
        self.writer = uuid.uuid4().hex[:12]
        self.publish = False
        """Hand each update out as `published` instead of loading it into the engine's network."""
        self.active = True
        """Whether updates run (readings are buffered either way, so a learner that becomes active has a buffer)."""
        self.published: WeightsVersion | None = None

    def observe(self, slots: np.ndarray, inputs: np.ndarray, reset: np.ndarray, keep: np.ndarray) -> None:
        """One wave's readings (each sensor at most once): pool `slots`, the network's `inputs` [n, C, 2], which rows
        start their sensor afresh (`reset`), and which may be learnt from (`keep`)."""
        if slots.size and slots.max() >= self.lane_of_slot.size:
            grown = np.full(max(int(slots.max()) + 1, 2 * self.lane_of_slot.size), -1, dtype=np.int64)
            grown[:self.lane_of_slot.size] = self.lane_of_slot
            self.lane_of_slot = grown
        lanes = self.lane_of_slot[slots]
        fresh = reset & (lanes < 0)
        if fresh.any() and self.lanes_used < len(self.inputs):
            new = np.flatnonzero(fresh)[:len(self.inputs) - self.lanes_used]
            lanes[new] = self.lane_of_slot[slots[new]] = np.arange(self.lanes_used, self.lanes_used + new.size)
            self.lanes_used += new.size
        rows = np.flatnonzero(lanes >= 0)
        if not rows.size:
            return
        at = lanes[rows]
        for buffer, new in ((self.inputs, inputs[rows]), (self.keep, keep[rows]), (self.valid, np.ones(rows.size, bool))):
            buffer[at, :-1] = buffer[at, 1:]
            buffer[at, -1] = new
        self.valid[at[reset[rows]], :-1] = False
        self.pending += rows.size
        self.stats.kept += int(keep[rows].sum())
        self.stats.left_out += int(rows.size - keep[rows].sum())

    def update(self, network: Network) -> bool:
        """If enough readings came since the last update, learn once and copy the weights into `network` (the one the
        engine scores with); True if its weights changed."""
        if not self.lanes_used or self.pending < self.every * self.lanes_used:
            return False
        if not self.active:
            self.pending = 0
            return False
        started = time.perf_counter()
        self.pending = 0
        used = slice(0, self.lanes_used)
        inputs = np.where(self.valid[used][:, :, None, None], self.inputs[used], 0.0).astype(np.float32)
        ok = self.valid[used] & self.keep[used]
        steps = self.valid[used, :-1] & ok[:, 1:]  # [sensors, T]: the forecast made at step t may be learnt from
        steps[:, :self.burn_in] = False
        if self.net.per_sensor_lanes:  # joint-gru: one lane per sensor, [sensors, T, C, 2], each step for every channel
            x = torch.from_numpy(inputs)
            mask = np.repeat(steps[:, :, None], self.channels, axis=2)
        else:  # one lane per (sensor, channel): [sensors × C, T, 2]
            x = torch.from_numpy(inputs.transpose(0, 2, 1, 3).reshape(-1, inputs.shape[1], FEATURES))
            mask = np.repeat(steps[:, None, :], self.channels, axis=1).reshape(-1, steps.shape[-1])
        if mask.sum() < MIN_TARGETS:
            self.stats.seconds += time.perf_counter() - started
            return False
        mean, logvar, _ = self.net(x[:, :-1], None)
        total, count = masked_nll(mean, logvar, x[:, 1:, ..., 0], torch.from_numpy(mask))
        loss = total / count
        changed = bool(torch.isfinite(loss))
        if changed:
            self.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip)
            self.opt.step()
            self.version += 1
            if self.publish:
                self.published = WeightsVersion.of(self.net, self.version, self.base, self.channels, self.writer)
            else:
                network.load_state_dict(self.net.state_dict())
            self.stats.updates += 1
            self.stats.last_loss = float(loss.detach())
        else:
            self.stats.skipped += 1
        self.stats.seconds += time.perf_counter() - started
        return changed and not self.publish

    def adopt(self, weights: WeightsVersion) -> None:
        """Go on learning from `weights` (another learner's version); the next version numbered after it."""
        if weights.writer != self.writer:
            self.net.load_state_dict(weights.tensors)
        self.version = max(self.version, weights.version)
