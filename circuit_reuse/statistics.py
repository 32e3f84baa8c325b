"""Statistics shared by every experiment: one percentile bootstrap, seeded draws and rank correlation.

- `bootstrap_means`: means of the same resamples of the prompts for several rows at once (conditions,
  say), so differences between rows are paired; `percentile_interval` reads an interval off any draws.
- `bootstrap_ci`: the percentile-bootstrap interval of one mean (a baseline's metric, an accuracy).
- `keyed_rng`: the generator of one repeat of a seeded random control, which depends only on the seed,
  a key (what the control is for) and the repeat.
- `spearman`: Spearman's rho and its p-value over the finite pairs.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

# Resampled prompts held in memory at once: the draws are chunked to this many indices, which keeps the
# memory bounded and, as the generator's stream does not depend on the chunking, changes no number.
_CHUNK_INDICES = 2_000_000


def bootstrap_means(values: Any, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of the columns of `values` ([rows, n] or [n]):
    [rows, n_resamples]. Every row is resampled with the same column indices, so row differences are
    paired. Deterministic for a seed."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n = values.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty((values.shape[0], n_resamples))
    chunk = max(1, _CHUNK_INDICES // max(n, 1))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[:, start : start + size] = values[:, rng.integers(0, n, (size, n))].mean(axis=-1)
    return means


def percentile_interval(draws: Any, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of `draws` by percentiles (NaN for no draws)."""
    draws = np.asarray(draws, dtype=np.float64)
    if draws.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(values: Any, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`; the same seed gives the same interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    return percentile_interval(bootstrap_means(values, n_resamples, seed)[0], level)


def keyed_rng(seed: int, key: str, repeat: int) -> np.random.Generator:
    """The generator of repeat `repeat` of a random control for `key` (e.g. a condition or a task): seeded
    by (seed, crc32(key), repeat), so a repeat's draw does not depend on which other controls run or how
    many repeats there are."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode()), repeat]))


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
