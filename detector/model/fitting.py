"""Fit on the stream's own history: the first `fit_first` readings fit the loaded model once (`fit_first`).

What an operator with a new plant would do with `hiddenstate train`, done by the detector itself: it
scores the first `fit_first` accepted readings with the loaded weights while it keeps them, then fits
a copy of the network on them (the objective and TBPTT of `hiddenstate train`, starting from the
loaded weights, `EPOCHS` epochs at most, the best epoch on held-out stretches kept) and scores every
later reading with the fit: a new weights version (detector/model/versions.py).

Each sensor's kept readings are prepared exactly as the engine normalises them (`training.prepare`;
`prepare_joint` for joint-gru, one lane per sensor),
then cut into stretches of `STRETCH` steps: those are the training lanes, a tenth of them held out
for validation, so even one sensor can be fitted. Sensors with fewer than `MIN_READINGS` kept
readings are left out. In the Kafka service the fit is published to the group's weights topic like a
learnt version (`publish`), and only the learning instance fits (`active`), in a thread of its own
(`fit_beside`): the service scores on with the loaded weights while it fits, instead of holding the
batch that brought the last kept reading for the seconds a fit takes.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from detector.config import DetectorConfig
from detector.errors import HiddenstateError, ModelError
from detector.model.networks import Network
from detector.model.training import TrainConfig, pad_lanes, prepare, prepare_joint, train
from detector.model.versions import WeightsVersion

log = logging.getLogger("hiddenstate.engine")

EPOCHS = 4
STRETCH = 256
MIN_READINGS = 16


class HistoryFit:
    """Keeps a stream's first readings and fits the network on them once; see the module docstring."""

    def __init__(self, channels: int, config: DetectorConfig) -> None:
        self.channels, self.readings, self.norm_window = channels, config.fit_first, config.norm_window
        self._ids: list[str] = []
        self._ts: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self.kept = 0
        self.writer = "fit-" + uuid.uuid4().hex[:8]
        self.publish = False
        """Hand the fit out (`Engine.take_learned`) instead of scoring with it here."""
        self.active = True
        """Whether this detector fits (the Kafka service: only the learning instance)."""
        self.metrics: dict = {}

    def add(self, ids: list[str], ts: np.ndarray, values: np.ndarray, accepted: np.ndarray) -> bool:
        """Keep a batch's `accepted` rows until `fit_first` are kept; True once they are and this detector fits.

        Once they are kept, a batch costs nothing here (a follower in the service keeps its fitter until the
        group's fit arrives).
        """
        if self.kept < self.readings:
            rows = np.flatnonzero(accepted)[:self.readings - self.kept]
            self._ids.extend(ids[i] for i in rows.tolist())
            self._ts.append(ts[rows].astype(np.float64))
            self._values.append(values[rows].astype(np.float64))
            self.kept += rows.size
        return self.active and self.kept >= self.readings

    def fit(self, network: Network, version: int, base: str) -> WeightsVersion:
        """The network fitted on the kept readings, as weights version `version` (the engine's network untouched)."""
        started = time.perf_counter()
        x, y, lengths = self._lanes(prepare_joint if network.per_sensor_lanes else prepare)
        config = TrainConfig(epochs=EPOCHS, patience=2, norm_window=self.norm_window)
        model, metrics = train(x, y, config, lengths=lengths, initial=copy.deepcopy(network))
        self.metrics = {**metrics, "readings": self.kept, "fit_seconds": round(time.perf_counter() - started, 1)}
        self._ids, self._ts, self._values = [], [], []
        return WeightsVersion.of(model.network, version, base, self.channels, self.writer)

    def fit_or_none(self, network: Network, version: int, base: str) -> WeightsVersion | None:
        """`fit`, or None (logged as a warning) when the kept readings are too few to fit on."""
        try:
            fitted = self.fit(network, version, base)
        except HiddenstateError as exc:
            log.warning("no fit on the first readings: %s; scoring on with the loaded weights", exc)
            return None
        log.info("fitted on the first %d readings in %.1f s (validation NLL %.3f)", self.kept,
                 self.metrics["fit_seconds"], self.metrics["val_nll"])
        return fitted

    def fit_beside(self, network: Network, version: int, base: str) -> Future[WeightsVersion | None]:
        """`fit_or_none` on a copy of `network` (taken now) in a daemon thread; the future holds its outcome."""
        future: Future[WeightsVersion | None] = Future()
        snapshot = copy.deepcopy(network)

        def work() -> None:
            try:
                future.set_result(self.fit_or_none(snapshot, version, base))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
                future.set_exception(exc)

        threading.Thread(target=work, name="hiddenstate-fit", daemon=True).start()
        return future

    def _lanes(self, lanes_of: Callable[..., tuple[np.ndarray, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ts, values = np.concatenate(self._ts), np.concatenate(self._values)
        _, first, sensor = np.unique(np.array(self._ids, dtype=object), return_index=True, return_inverse=True)
        by_sensor = np.argsort(sensor, kind="stable")  # each sensor's rows together, in stream order
        ends = np.cumsum(np.bincount(sensor))
        parts = []
        for k in np.argsort(first).tolist():  # sensors in the order they first came
            rows = by_sensor[(ends[k - 1] if k else 0):ends[k]]
            if rows.size < MIN_READINGS:
                continue
            x, y = lanes_of(ts[rows], values[rows][:, None, :], self.norm_window)
            for start in range(0, x.shape[1], STRETCH):
                if x.shape[1] - start >= MIN_READINGS:
                    parts.append((x[:, start:start + STRETCH], y[:, start:start + STRETCH]))
        if len(parts) < 2:
            raise ModelError(f"fit_first = {self.readings}: too few readings per sensor to fit on (each sensor needs "
                             f"{MIN_READINGS} or more, and {2 * STRETCH} in all): raise fit_first")
        return pad_lanes(parts)
