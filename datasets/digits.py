"""scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes), offline.

Pixel values 0..16 scaled to [0, 1]; a fixed stratified 60/20/20 train/val/test split
(``split_seed``), the same for every run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec
from slabbench.data import as_tensors, stratified_split

FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Params:
    split_seed: int = 0


class Dataset(_Base):
    Params = Params

    def __init__(self, params: Params, seed: int = 0):
        super().__init__(params, seed)
        # scikit-learn is imported when the data are loaded, not when the config is validated: importing it
        # costs about a second, which every parse of the Snakefile (every `snakemake` call) would pay
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.images.reshape(-1, 1, 8, 8) / 16.0
        parts = stratified_split(bunch.target, FRACTIONS, params.split_seed)
        self._splits = {s: as_tensors(x[i], bunch.target[i], "classification") for s, i in zip(("train", "val", "test"), parts)}

    def spec(self) -> DatasetSpec:
        return DatasetSpec(name="digits", task="classification", input_shape=(1, 8, 8), outputs=10,
                           sizes={s: len(v[1]) for s, v in self._splits.items()}, feature_shape=(8, 8))

    def load(self, split: str):
        return self._splits[split]
