"""Aggregates over seeds: run counts, mean, sd and a Student-t 95% confidence interval of the mean.

The interval is Student's t: mean ± t_{n-1, 0.975} · sd / √n.  Its coverage is exact for
normally distributed values at every n ≥ 2 and close to nominal for the mildly skewed metrics of
this suite at the seed counts it runs (3, 5, 30; ``tests/test_stats.py`` checks it by
simulation).  The percentile bootstrap used before is about [min, max] of the values at n = 3,
which covers the mean of a symmetric distribution with probability 1 - 2 · 0.5³ = 75%.  One
value gives no interval (NaN, NaN).

Non-finite values (NaN: a diverged run; ±inf, e.g. the compression of a fully pruned net) are
never averaged in and never dropped in silence: :func:`describe` reports how many there were
beside the number of values the statistics are over.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _sps

#: the interval used for every "95% CI" of this suite, as named in captions and headers
CI_LEVEL = 0.95
CI_NAME = "Student-t 95% CI of the mean"


def _floats(values) -> np.ndarray:
    """``values`` as float64 with ``None`` read as NaN (shape (n,))."""
    return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)


def t_interval(values, level: float = CI_LEVEL) -> tuple[float, float]:
    """Student-t confidence interval of the mean of the finite ``values``.

    mean ± t_{n-1, (1+level)/2} · sd / √n with sd the sample sd (ddof = 1).  Fewer than two
    finite values give (nan, nan): one seed says nothing about the spread.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    x = _floats(values)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    half = float(_sps.t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    m = float(x.mean())
    return m - half, m + half


def describe(values) -> dict[str, float]:
    """Counts and statistics of ``values`` (one per run).

    Returns ``n`` (finite values; mean, sd and CI are over these), ``n_nan`` (NaN or None:
    diverged or not measured), ``n_inf`` (±inf), ``mean``, ``sd`` (ddof = 1; 0 for one value;
    NaN for none) and ``ci_low`` / ``ci_high`` (:func:`t_interval`).
    """
    x = _floats(values)
    finite = x[np.isfinite(x)]
    lo, hi = t_interval(finite)
    n = len(finite)
    return {
        "n": int(n),
        "n_nan": int(np.isnan(x).sum()),
        "n_inf": int(np.isinf(x).sum()),
        "mean": float(finite.mean()) if n else math.nan,
        "sd": float(finite.std(ddof=1)) if n > 1 else (0.0 if n else math.nan),
        "ci_low": lo,
        "ci_high": hi,
    }


def mean_sd(values, digits: int = 3) -> str:
    """'mean ± sd' over the finite values with ``digits`` decimals; '–' when there is none."""
    d = describe(values)
    if d["n"] == 0:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"
