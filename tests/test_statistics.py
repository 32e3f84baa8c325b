"""The shared statistics against known data: the bootstrap, its intervals, seeded draws, Spearman's rho."""

from __future__ import annotations

import math

import numpy as np
import pytest

from circuit_reuse import statistics
from circuit_reuse.statistics import bootstrap_ci, bootstrap_means, keyed_rng, percentile_interval, spearman


def test_bootstrap_means_are_deterministic_for_a_seed_and_paired(monkeypatch):
    correct = np.array([[1, 0, 1, 1, 0, 1, 0, 0, 1, 1], [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]], dtype=float)
    a, b = bootstrap_means(correct, 1000, seed=3), bootstrap_means(correct, 1000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, bootstrap_means(correct, 1000, seed=4))
    np.testing.assert_array_equal(a[0], a[1])  # the same resamples for every row
    assert abs(a[0].mean() - 0.6) < 0.02
    # Chunking the draws (7 resamples of 10 prompts at a time here) does not change them.
    monkeypatch.setattr(statistics, "_CHUNK_INDICES", 70)
    np.testing.assert_array_equal(a, bootstrap_means(correct, 1000, seed=3))


def test_bootstrap_means_resample_with_replacement():
    # Two prompts: each resample's mean is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4.
    draws = bootstrap_means([0.0, 1.0], 20_000, seed=0)[0]
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0}
    assert np.mean(draws == 0.5) == pytest.approx(0.5, abs=0.02)


def test_bootstrap_interval():
    values = np.random.default_rng(0).normal(2.0, 1.0, 400)
    low, high = bootstrap_ci(values, n_resamples=2000, seed=7)
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.15)
    assert bootstrap_ci(values, n_resamples=2000, seed=7) == (low, high)
    assert bootstrap_ci(values, n_resamples=2000, seed=8) != (low, high)
    assert bootstrap_ci([3.0] * 10, n_resamples=100) == (3.0, 3.0)
    wide, narrow = bootstrap_ci(values, level=0.99, seed=7), bootstrap_ci(values, level=0.5, seed=7)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_percentile_interval_on_known_draws():
    assert percentile_interval(np.arange(101), level=0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval([2.0, 4.0], level=0.0) == (3.0, 3.0)
    assert all(math.isnan(x) for x in percentile_interval([]))


def test_keyed_rng_depends_on_seed_key_and_repeat_alone():
    draw = lambda seed, key, repeat: keyed_rng(seed, key, repeat).integers(0, 1 << 30, 4).tolist()  # noqa: E731
    assert draw(1, "both", 2) == draw(1, "both", 2)
    assert len({str(draw(*args)) for args in [(1, "both", 2), (2, "both", 2), (1, "inh", 2), (1, "both", 3)]}) == 4


def test_spearman_on_known_data():
    rho, p, n = spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert rho == pytest.approx(8 / math.sqrt(95)) and n == 5 and 0 < p < 1
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert spearman([1, 2, np.nan, 4, 5], [1, 2, 3, 4, 5])[2] == 4
    assert math.isnan(spearman([1, 2], [1, 2])[0]) and math.isnan(spearman([1, 1, 1], [1, 2, 3])[0])
