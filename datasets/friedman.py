"""Friedman #1 (Friedman 1991, MARS paper; Breiman 1996), the classic variable-selection benchmark.

x ~ U(0, 1)^p;  y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + eps,  eps ~ N(0, noise_sd^2),
generated offline by scikit-learn's ``make_friedman1``.  The true support is x1..x5 (indices
0..4); the other p - 5 inputs are noise.  Each seed draws a fresh replicate data set (train,
validation and test from independent draws of one generator seeded by the run seed).

Scale of the target (closed form, x uniform): the noise-free signal f(x) has mean
``SIGNAL_MEAN`` = 14.413 and sd ``SIGNAL_SD`` = 4.881.  With ``center`` (the default) y is
``f(x) - SIGNAL_MEAN + eps`` (a constant shift, not estimated from the data), so RMSE stays in
y's units: the test-RMSE noise floor is ``noise_sd`` and predicting the mean gives
sqrt(SIGNAL_SD^2 + noise_sd^2) = 4.98 at noise_sd = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import sici

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec, PluginError

TRUE_SUPPORT = (0, 1, 2, 3, 4)
#: E[sin(pi x1 x2)] = Cin(pi) / pi and E[sin^2(pi x1 x2)] = 1/2 - Si(2 pi) / (4 pi), x1, x2 ~ U(0, 1)
_E_SIN = (np.euler_gamma + math.log(math.pi) - sici(math.pi)[1]) / math.pi
_E_SIN2 = 0.5 - sici(2 * math.pi)[0] / (4 * math.pi)
#: mean of f(x): 10 E[sin] + 20 E[(x3 - 1/2)^2] + 10 E[x4] + 5 E[x5] = 10 E[sin] + 20/12 + 5 + 2.5
SIGNAL_MEAN = float(10 * _E_SIN + 20 / 12 + 7.5)
#: sd of f(x): the four terms are independent; Var(20 (x3 - 1/2)^2) = 400/180, Var(10 x4) = 100/12, Var(5 x5) = 25/12
SIGNAL_SD = float(math.sqrt(100 * (_E_SIN2 - _E_SIN ** 2) + 400 / 180 + 100 / 12 + 25 / 12))
#: mixed into the generator's seed so a Friedman replicate is not the simulation's under another name
_SEED_TAG = 1991


@dataclass(frozen=True)
class Params:
    p: int = 100  #: number of inputs (5 relevant + p - 5 noise); Friedman's original: 10
    n_train: int = 1000
    n_val: int = 1000
    n_test: int = 10000
    noise_sd: float = 1.0  #: sd of eps, in y's units; the test-RMSE noise floor
    center: bool = True  #: subtract SIGNAL_MEAN (a constant) from y; false keeps make_friedman1's y

    def __post_init__(self) -> None:  # checked when the configuration is validated, before any job
        if self.p < 5:
            raise PluginError(f"friedman needs p >= 5 (5 true features), got p={self.p}")
        for key in ("n_train", "n_val", "n_test"):
            if getattr(self, key) < 1:
                raise PluginError(f"friedman option {key} must be >= 1, got {getattr(self, key)}")
        if not self.noise_sd >= 0:
            raise PluginError(f"friedman option noise_sd must be >= 0, got {self.noise_sd}")


class Dataset(_Base):
    Params = Params

    def __init__(self, params: Params, seed: int = 0):
        super().__init__(params, seed)
        rng = np.random.RandomState([int(seed) % 2 ** 32, _SEED_TAG])
        # imported here, not at the top: see datasets/digits.py
        from sklearn.datasets import make_friedman1

        shift = SIGNAL_MEAN if params.center else 0.0
        self._splits = {}
        for split, n in (("train", params.n_train), ("val", params.n_val), ("test", params.n_test)):
            x, y = make_friedman1(n_samples=n, n_features=params.p, noise=params.noise_sd, random_state=rng)
            self._splits[split] = (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y - shift, dtype=torch.float32))

    def spec(self) -> DatasetSpec:
        p = self.params
        return DatasetSpec(
            name="friedman", task="regression", input_shape=(p.p,), outputs=1,
            sizes={"train": p.n_train, "val": p.n_val, "test": p.n_test},
            true_support=TRUE_SUPPORT, replicate_per_seed=True,
        )

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: x float32 (n, p) in [0, 1], y float32 (n,) in y's units (centred by default)."""
        return self._splits[split]
