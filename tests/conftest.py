"""Shared fixtures: small models and synthetic streams; no test reads ../shared data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.model.store import Model, untrained

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_model() -> Model:
    """An untrained GRU (fixed seed): enough to test mechanics, fast to step."""
    return untrained(hidden_size=8, layers=2, seed=3)


def noisy_sine(steps: int, channels: int = 1, seed: int = 0, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """[steps, channels] of a noisy sine per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    phase = rng.uniform(0, 6.28, channels)[None, :]
    return offset + scale * (np.sin(t / 8.0 + phase) + 0.1 * rng.standard_normal((steps, channels)))
