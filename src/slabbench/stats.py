"""Aggregates over seeds: mean, sd and a seeded percentile-bootstrap 95% CI of the mean."""

from __future__ import annotations

import math

import numpy as np

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def bootstrap_ci(values, level: float = 0.95, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs dropped); deterministic for a seed.

    One value gives (value, value); none gives (nan, nan).
    """
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def describe(values) -> dict[str, float]:
    """n, mean, sd (ddof=1; 0 for one value) and the bootstrap 95% CI."""
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    lo, hi = bootstrap_ci(x)
    return {
        "n": int(len(x)),
        "mean": float(x.mean()) if len(x) else math.nan,
        "sd": float(x.std(ddof=1)) if len(x) > 1 else (0.0 if len(x) else math.nan),
        "ci_low": lo,
        "ci_high": hi,
    }


def mean_sd(values, digits: int = 3) -> str:
    """'mean ± sd' with ``digits`` significant decimals; '–' when there is no value."""
    d = describe(values)
    if d["n"] == 0:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"
