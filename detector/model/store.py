"""Saving and loading model directories: weights, hyperparameters and model card.

A model directory holds
- `weights.safetensors`: the tensors only (loading never executes code);
- `model.json`: architecture, hyperparameters, the weights' SHA-256, how it was
  trained and its scores; the checksum is verified at load;
- `MODEL_CARD.md`: the same for humans.

A model trained on named channels with a fixed channel set (joint-gru, trained on files whose columns
name the channels) records them in model.json as `channel_names`, in the order it reads them;
`check_channel_names` holds data to them.

Shipped models live in the repository's `models/` (packaged into the wheel) and
are loaded by name (`gru-default`); any other directory is loaded by path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from detector.errors import ModelError
from detector.model.networks import GRUForecaster, Network, build_network

FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
META = "model.json"
CARD = "MODEL_CARD.md"


@dataclass
class Model:
    """A network plus what is known about it."""

    name: str
    network: Network
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def model_id(self) -> str:
        """Name and the first 12 hex digits of the weights' checksum: identifies the exact weights."""
        return f"{self.name}@{self.meta.get('sha256', 'unsaved')[:12]}"


def shipped_models_dir() -> Path:
    """Where the shipped models are: inside the installed package, else the source tree's models/."""
    packaged = resources.files("detector") / "shipped_models"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "models"


def shipped_model_names() -> list[str]:
    root = shipped_models_dir()
    return sorted(p.name for p in root.iterdir() if (p / META).is_file()) if root.is_dir() else []


def resolve(name_or_path: str | Path) -> Path:
    """The directory of a shipped model name or a path; ModelError if there is none."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = shipped_models_dir() / str(name_or_path)
    if (candidate / META).is_file():
        return candidate
    known = ", ".join(shipped_model_names()) or "none"
    raise ModelError(f"unknown model {str(name_or_path)!r}: not a model directory; shipped models: {known}")


def load_model(name_or_path: str | Path) -> Model:
    """Load a model by shipped name or directory, verifying its checksum and tensor shapes."""
    directory = resolve(name_or_path)
    try:
        meta = json.loads((directory / META).read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory} has no {META}; is it a model directory?") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{directory / META} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ModelError(f"{directory} has model format {meta.get('format')!r}; this version reads {FORMAT_VERSION}")
    weights = directory / WEIGHTS
    try:
        digest = _sha256(weights)
    except FileNotFoundError:
        raise ModelError(f"{directory} has no {WEIGHTS}") from None
    if digest != meta.get("sha256"):
        raise ModelError(f"{weights} does not match the checksum in {META}: the file was changed or corrupted")
    network = build_network(meta.get("hyperparameters", {}))
    try:
        tensors = load_file(str(weights))
        network.load_state_dict(tensors, strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise ModelError(f"{weights} does not fit {meta.get('hyperparameters')}: {exc}") from None
    return Model(name=meta.get("name", directory.name), network=network.eval(), meta=meta, path=directory)


def check_channel_names(model: Model, names: list[str] | None, where: str) -> None:
    """Refuse data whose channels are not the ones, in the order, the model was trained on (ModelError).

    Only a model with `channel_names` in its meta is checked (joint-gru trained on named columns): a
    channel-independent model reads any channels, and unnamed data (`names` None) cannot be checked.
    """
    expected = model.meta.get("channel_names")
    if expected is None or names is None or list(names) == list(expected):
        return
    raise ModelError(f"{where} has channels {list(names)} but model {model.model_id} reads {list(expected)}, in that "
                     "order: pick and order the columns to match (replay --columns), or train a model on these")


def save_model(model: Model, directory: str | Path, card_markdown: str | None = None) -> Path:
    """Write `model` into `directory` (created); fills in format and checksum of its meta."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.network.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    model.meta.update(
        format=FORMAT_VERSION,
        name=model.name,
        hyperparameters=model.network.hyperparameters,
        sha256=_sha256(directory / WEIGHTS),
    )
    (directory / META).write_text(json.dumps(model.meta, indent=2, sort_keys=True) + "\n")
    if card_markdown is not None:
        (directory / CARD).write_text(card_markdown)
    model.path = directory
    return directory


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def untrained(hidden_size: int = 32, layers: int = 1, seed: int = 0) -> Model:
    """A freshly initialised model (for tests and as the start of training)."""
    torch.manual_seed(seed)
    return Model(name="untrained", network=GRUForecaster(hidden_size, layers).eval())
