"""Statistics shared by every experiment: percentile-bootstrap intervals and rank correlation.

- `bootstrap_ci`: the percentile-bootstrap interval of a mean.
- `bootstrap_accuracy`: accuracies of the same prompt resamples for several conditions at once, so
  differences between conditions are paired.
- `spearman`: Spearman's rho and its p-value over the finite pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def bootstrap_ci(values: Any, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`; the same seed gives the same interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[start : start + size] = values[rng.integers(0, values.size, (size, values.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_accuracy(correct: np.ndarray, n_boot: int, seed: int, chunk: int = 500) -> np.ndarray:
    """Accuracies of `n_boot` resamples of the prompts, [conditions, n_boot], the same resamples for all rows.

    Resampling the prompts once for every condition makes differences between conditions paired.
    Deterministic for a seed.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    n = correct.shape[1]
    rng = np.random.default_rng(seed)
    draws = []
    for done in range(0, n_boot, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_boot - done), n))
        draws.append(correct[:, index].mean(-1))
    return np.concatenate(draws, axis=1) if draws else np.empty((correct.shape[0], 0))


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Spearman's rho and its two-sided p-value over the pairs where both are finite, and their count.

    NaN when fewer than 3 pairs remain or either side is constant. The p-value is scipy's (a t
    approximation): rough for the handful of movers a circuit has, and 0 when the ranks agree perfectly.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, int(len(x))
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue), int(len(x))
