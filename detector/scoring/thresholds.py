"""Which readings are anomalous: a threshold on the calibrated score, after a warm-up.

Because the score is a tail probability under each sensor's own running error
distribution, one threshold on it is a dynamic threshold on the error: in error
units it sits at exp(μ + Φ⁻¹(threshold)·σ) of that sensor, moving as the sensor's
errors do. `error_threshold` gives that level, e.g. for an alert's reason.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from detector.scoring.calibration import SIGMA_FLOOR


def is_anomalous(score: np.ndarray, count: np.ndarray, warmup: int, threshold: float) -> np.ndarray:
    """True where a reading scores at or above `threshold` and its sensor has finished warming up."""
    return (score >= threshold) & (count >= warmup)


def error_threshold(err_mean: float, err_var: float, threshold: float) -> float:
    """The smoothed standardised error at which this sensor's score reaches `threshold`."""
    sigma = max(math.sqrt(max(err_var, 0.0)), SIGMA_FLOOR)
    return math.exp(err_mean + NormalDist().inv_cdf(threshold) * sigma)
