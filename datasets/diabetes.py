"""scikit-learn's bundled diabetes regression set (442 patients, 10 features), offline.

The raw features (``scaled=False``; scikit-learn's scaled copy is centred and scaled with
all 442 rows, test rows included) and the target are standardised with the training split's
mean and sd only, so nothing about the validation or test rows leaks into training; RMSE is in
units of the target's training sd (about 1.0 = predicting the training mean).
A fixed 60/20/20 train/val/test split (``split_seed``), the same for every run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec
from slabbench.data import as_tensors, random_split

FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Params:
    split_seed: int = 0


class Dataset(_Base):
    Params = Params

    def __init__(self, params: Params, seed: int = 0):
        super().__init__(params, seed)
        # imported here, not at the top: see datasets/digits.py
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True, scaled=False)
        parts = random_split(len(y), FRACTIONS, params.split_seed)
        train = parts[0]
        x = (x - x[train].mean(axis=0)) / x[train].std(axis=0)
        y = (y - y[train].mean()) / y[train].std()
        self._splits = {s: as_tensors(x[i], y[i], "regression") for s, i in zip(("train", "val", "test"), parts)}

    def spec(self) -> DatasetSpec:
        return DatasetSpec(name="diabetes", task="regression", input_shape=(10,), outputs=1,
                           sizes={s: len(v[1]) for s, v in self._splits.items()})

    def load(self, split: str):
        return self._splits[split]
