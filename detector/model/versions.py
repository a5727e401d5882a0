"""Weights versions: learnt weights as one self-describing record, and the check that they fit an engine.

Online learning (`learning = "online"`) makes new weights while the detector runs. A `WeightsVersion`
is one of them: the tensors plus what they were learnt from: the loaded model's weights hash (`base`),
its architecture, the channel count, the version number, when and by whom. `to_bytes` is a safetensors
buffer with those facts as its metadata, so reading a record never executes code; the Kafka service
keeps them on a compacted topic (consumers/weights.py), one consumer group one key.

`check` refuses weights an engine cannot use: learnt from another model (another base hash or
architecture), for another channel count, or with tensors of other names or shapes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from detector.errors import ModelError
from detector.model.networks import Network


@dataclass(frozen=True)
class WeightsVersion:
    """One version of a model's weights, learnt online from `base` (the loaded model's SHA-256)."""

    version: int
    tensors: dict[str, torch.Tensor] = field(repr=False)
    base: str
    architecture: dict
    channels: int
    created_at: float = field(default_factory=time.time)  # Unix seconds
    writer: str = ""  # the learner that made it (a random id per process)

    @classmethod
    def of(cls, network: Network, version: int, base: str, channels: int, writer: str) -> WeightsVersion:
        """The network's current weights as version `version` (copied: later learning does not change them)."""
        tensors = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
        return cls(version, tensors, base, network.hyperparameters, channels, writer=writer)

    def to_bytes(self) -> bytes:
        meta = {"version": str(self.version), "base": self.base, "architecture": json.dumps(self.architecture,
                sort_keys=True), "channels": str(self.channels), "created_at": repr(self.created_at),
                "writer": self.writer}
        return save_tensors(self.tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> WeightsVersion:
        """Read a record written by `to_bytes`; ModelError if it is not one."""
        try:
            tensors = load_tensors(data)
            header_len = int.from_bytes(data[:8], "little")
            meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
            return cls(int(meta["version"]), tensors, meta["base"], json.loads(meta["architecture"]),
                       int(meta["channels"]), float(meta["created_at"]), meta.get("writer", ""))
        except (SafetensorError, KeyError, ValueError, TypeError) as exc:
            raise ModelError(f"not a weights record ({type(exc).__name__}: {exc}); it was not written by "
                             "hiddenstate's learner: remove it from the weights topic") from None

    def check(self, network: Network, base: str, channels: int) -> None:
        """Refuse (ModelError) weights that do not fit this network, model and channel count."""
        if self.base != base or self.architecture != network.hyperparameters:
            raise ModelError(f"weights version {self.version} was learnt from model {self.base[:12]} "
                             f"({self.architecture}), not the loaded {base[:12]} ({network.hyperparameters}): "
                             "left unused; the learner starts again from the loaded model's weights")
        if self.channels != channels:
            raise ModelError(f"weights version {self.version} was learnt on sensors with {self.channels} channel(s), "
                             f"these have {channels}: left unused; give each channel layout its own consumer group")
        own = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in self.tensors.items()}
        if own != theirs:
            raise ModelError(f"weights version {self.version} has tensors {theirs}, the network {own}: left unused")
