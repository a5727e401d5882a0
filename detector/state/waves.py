"""Waves: how a micro-batch is cut so that results do not depend on batching.

A sensor that occurs several times in one batch must be stepped once per reading, in order: wave k holds
each sensor's k-th reading of the batch, so every wave has at most one reading per sensor and the waves
run one after another.
"""

from __future__ import annotations

import numpy as np


def waves(slots: np.ndarray) -> list[np.ndarray]:
    """Split batch positions into waves: wave k holds each sensor's k-th reading, in input order."""
    if slots.size <= 1:
        return [np.arange(slots.size)] if slots.size else []
    in_order = np.sort(slots)  # much cheaper than the stable argsort below, and usually all a batch needs
    if (in_order[1:] != in_order[:-1]).all():
        return [np.arange(slots.size)]
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.ones(slots.size, dtype=bool)
    starts[1:] = sorted_slots[1:] != sorted_slots[:-1]
    positions = np.arange(slots.size)
    rank_sorted = positions - np.maximum.accumulate(np.where(starts, positions, 0))
    if rank_sorted.max() == 0:
        return [positions]
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]
