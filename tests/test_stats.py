import math

import numpy as np
import pytest

from slabbench.stats import CI_NAME, describe, mean_sd, t_interval


def test_describe_by_hand():
    d = describe([1.0, 2.0, 3.0])
    assert d["n"] == 3 and d["mean"] == 2.0 and d["sd"] == pytest.approx(1.0)
    # t_{2, 0.975} = 4.302653; half width 4.302653 * 1 / sqrt(3) = 2.484138
    assert d["ci_low"] == pytest.approx(2 - 2.484138, abs=1e-6) and d["ci_high"] == pytest.approx(2 + 2.484138, abs=1e-6)
    assert mean_sd([1.0, 2.0, 3.0], digits=2) == "2.00 ± 1.00"
    assert "Student-t" in CI_NAME


def test_non_finite_values_are_counted_not_averaged_in_silence():
    d = describe([1.0, 1.2, float("nan")])  # the case: a diverged seed
    assert d["n"] == 2 and d["n_nan"] == 1 and d["n_inf"] == 0 and d["mean"] == pytest.approx(1.1)
    d = describe([None, float("inf"), 4.0])
    assert d["n"] == 1 and d["n_nan"] == 1 and d["n_inf"] == 1 and d["mean"] == 4.0 and d["sd"] == 0.0
    assert math.isnan(d["ci_low"]) and math.isnan(d["ci_high"])  # one value: no interval
    assert describe([])["n"] == 0 and mean_sd([float("nan")]) == "–"


def _coverage(interval, n, reps, rng, draw):
    hits = 0
    for _ in range(reps):
        lo, hi = interval(draw(rng, n))
        hits += lo <= 0.0 <= hi
    return hits / reps


@pytest.mark.parametrize("n", [3, 5, 30])
def test_ci_coverage_holds_at_the_seed_counts_we_run(n):
    """Normal data with true mean 0: the 95% CI must cover 0 in 95% of repetitions at every
    seed count (3000 repetitions: binomial sd 0.004, tolerance 0.015)."""
    rng = np.random.default_rng(n)
    cov = _coverage(t_interval, n, 3000, rng, lambda r, k: r.normal(0.0, 1.0, k))
    assert abs(cov - 0.95) < 0.015, cov


def test_ci_coverage_on_a_skewed_metric():
    """A right-skewed metric (gamma, shape 10, like an RMSE over seeds) centred at its true
    mean: still within 2.5 points of nominal at 5 seeds."""
    rng = np.random.default_rng(5)
    cov = _coverage(t_interval, 5, 3000, rng, lambda r, k: r.gamma(10.0, 1.0, k) - 10.0)
    assert abs(cov - 0.95) < 0.025, cov


def test_t_interval_rejects_a_bad_level():
    with pytest.raises(ValueError, match="level must be in"):
        t_interval([1.0, 2.0], level=95)
