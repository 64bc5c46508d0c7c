"""Bai, Song & Cheng (NeurIPS 2020) simulation, docs/science.md §3.

x ~ U(-1, 1)^p;  y = 7 x2 / (1 + x1^2) + 5 sin(x3 x4) + 2 x5 + eps,  eps ~ N(0, noise_sd^2).
The true support is x1..x5 (indices 0..4).  Each seed draws a fresh replicate data set
(train, validation and test from independent draws of the same design).  The validation
split is ours (Bai et al. have none); it never reduces ``n_train``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec, PluginError

TRUE_SUPPORT = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Params:
    p: int = 200  #: number of inputs (5 relevant + p - 5 noise)
    n_train: int = 3000
    n_val: int = 1000
    n_test: int = 10000
    noise_sd: float = 1.0  #: sd of eps; the test-RMSE noise floor

    def __post_init__(self) -> None:  # checked when the configuration is validated, before any job
        if self.p < 5:
            raise PluginError(f"simulation needs p >= 5 (5 true features), got p={self.p}")
        for key in ("n_train", "n_val", "n_test"):
            if getattr(self, key) < 1:
                raise PluginError(f"simulation option {key} must be >= 1, got {getattr(self, key)}")
        if not self.noise_sd >= 0:
            raise PluginError(f"simulation option noise_sd must be >= 0, got {self.noise_sd}")


def response(x: torch.Tensor) -> torch.Tensor:
    """Noise-free regression function of Bai et al. (x: (n, p), p >= 5) -> (n,)."""
    x1, x2, x3, x4, x5 = (x[:, i] for i in range(5))
    return 7 * x2 / (1 + x1 ** 2) + 5 * torch.sin(x3 * x4) + 2 * x5


class Dataset(_Base):
    Params = Params

    def __init__(self, params: Params, seed: int = 0):
        super().__init__(params, seed)
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + 17)
        self._splits = {}
        for split, n in (("train", params.n_train), ("val", params.n_val), ("test", params.n_test)):
            x = torch.rand(n, params.p, generator=gen) * 2 - 1
            y = response(x) + params.noise_sd * torch.randn(n, generator=gen)
            self._splits[split] = (x, y)

    def spec(self) -> DatasetSpec:
        p = self.params
        return DatasetSpec(
            name="simulation", task="regression", input_shape=(p.p,), outputs=1,
            sizes={"train": p.n_train, "val": p.n_val, "test": p.n_test},
            true_support=TRUE_SUPPORT, replicate_per_seed=True,
        )

    def load(self, split: str):
        return self._splits[split]
