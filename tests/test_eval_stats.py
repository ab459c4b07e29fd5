import numpy as np
import pytest

from llmrec.errors import DataError
from llmrec.eval.stats import bootstrap_mean_interval, paired_difference, seed_mean_by_user


def test_bootstrap_interval_brackets_the_mean_and_matches_the_normal_width():
    rng = np.random.default_rng(0)
    diffs = rng.normal(0.05, 0.2, size=2000)
    d = bootstrap_mean_interval(diffs, n_boot=2000, seed=1)
    assert d.mean == pytest.approx(diffs.mean()) and d.n == 2000
    assert d.lo < d.mean < d.hi
    half = 1.96 * diffs.std(ddof=1) / np.sqrt(diffs.size)  # the normal approximation is close at this size
    assert (d.hi - d.lo) / 2 == pytest.approx(half, rel=0.1)
    assert d.significant  # 0.05 with a standard error of ~0.0045
    assert bootstrap_mean_interval(diffs, seed=1) == bootstrap_mean_interval(diffs, seed=1)  # seeded


def test_noise_around_zero_is_not_significant_and_constant_shift_is():
    rng = np.random.default_rng(3)
    noise = rng.choice([-1.0, 1.0], size=400)
    noise -= noise.mean()  # mean exactly 0
    assert not bootstrap_mean_interval(noise, seed=0).significant
    shifted = bootstrap_mean_interval(np.full(10, -0.1))
    assert shifted.lo == shifted.hi == pytest.approx(-0.1) and shifted.significant


def test_paired_difference_pools_seeds_per_user_and_uses_shared_users_only():
    row = [{"a": 0.5, "b": 0.0, "c": 1.0}, {"a": 0.3, "b": 0.2}]  # seed 1 scored only a and b
    ref = [{"a": 0.1, "b": 0.1, "z": 0.9}]
    assert seed_mean_by_user(row) == pytest.approx({"a": 0.4, "b": 0.1, "c": 1.0})
    d = paired_difference(row, ref, n_boot=50)
    assert d.n == 2 and d.mean == pytest.approx(((0.4 - 0.1) + (0.1 - 0.1)) / 2)
    assert paired_difference([{"x": 1.0}], ref) is None


def test_bootstrap_rejects_bad_input():
    with pytest.raises(DataError, match="non-empty"):
        bootstrap_mean_interval(np.array([]))
    with pytest.raises(DataError, match="level"):
        bootstrap_mean_interval(np.ones(3), level=1.5)
