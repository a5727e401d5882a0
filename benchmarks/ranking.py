"""How well a per-row score ranks anomalous rows above normal ones, shared by the detection benchmarks.

ROC-AUC (Mann–Whitney: tied scores count half) and the share of rows tied at the top score, a saturation
check: a score that reaches its ceiling on many rows cannot be thresholded between them.
"""

from __future__ import annotations

import numpy as np


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (tied scores ranked by their average rank); NaN without both classes."""
    score = np.asarray(score, dtype=np.float64)
    pos = np.asarray(label) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    if not np.all(np.isfinite(score)):
        raise ValueError("scores must be finite")
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average rank of each tie group
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_tie_share(score: np.ndarray) -> float:
    """Share of rows whose score equals the maximum score."""
    score = np.asarray(score)
    return float(np.mean(score == score.max())) if score.size else float("nan")


def ranking(name: str, score: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """`auc_<name>`, `top_tie_<name>` over all rows and `top_tie_normal_<name>` over the rows labelled normal."""
    score, normal = np.asarray(score), np.asarray(label) != 1
    return {f"auc_{name}": roc_auc(score, label), f"top_tie_{name}": top_tie_share(score),
            f"top_tie_normal_{name}": top_tie_share(score[normal])}
