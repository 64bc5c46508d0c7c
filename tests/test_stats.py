import pytest

from slabbench.stats import bootstrap_ci, describe, mean_sd


def test_describe_by_hand():
    d = describe([1.0, 2.0, 3.0])
    assert d["n"] == 3 and d["mean"] == 2.0 and d["sd"] == pytest.approx(1.0)
    assert 1.0 <= d["ci_low"] < 2.0 < d["ci_high"] <= 3.0
    assert describe([None, float("nan"), 4.0])["mean"] == 4.0
    assert mean_sd([1.0, 2.0, 3.0], digits=2) == "2.00 ± 1.00"


def test_bootstrap_is_seeded():
    x = [0.1, 0.5, 0.2, 0.9, 0.4]
    assert bootstrap_ci(x) == bootstrap_ci(x)
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
