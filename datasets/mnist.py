"""MNIST (60,000 train + 10,000 test, 28x28, 10 classes), read from IDX files.

Looked for (plain or .gz) in ``root`` if set, else ``resources/MNIST/raw`` (torchvision's
layout).  The decoded content is verified against the canonical SHA-256 sums.  If files are
missing and ``download`` is true, torchvision's downloader fetches them into
``resources/``; without a network the error says which files to put where.
5,000 training images (stratified, ``split_seed``) form the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec
from slabbench.data import load_mnist_like, resources_dir, split_sizes

SHA256_DECODED = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


@dataclass(frozen=True)
class Params:
    root: str | None = None  #: folder holding the four IDX files; default resources/MNIST/raw
    download: bool = True  #: try torchvision's downloader when files are missing
    val_size: int = 5000
    split_seed: int = 0


class Dataset(_Base):
    Params = Params

    def folders(self) -> list[Path]:
        return [Path(self.params.root)] if self.params.root else [resources_dir() / "MNIST" / "raw"]

    def _download(self) -> None:
        from torchvision.datasets import MNIST

        MNIST(str(resources_dir()), train=True, download=True)

    def prepare(self) -> None:
        how = ("Copy the four MNIST IDX files there (torchvision.datasets.MNIST(root='resources', "
               "download=True) fetches them into resources/MNIST/raw), or set dataset_params.root.")
        self._splits = load_mnist_like("mnist", self.folders(), SHA256_DECODED, how,
                                       self._download if self.params.download else None,
                                       self.params.val_size, self.params.split_seed)

    def spec(self) -> DatasetSpec:
        return DatasetSpec(name="mnist", task="classification", input_shape=(1, 28, 28), outputs=10,
                           sizes=split_sizes(getattr(self, "_splits", None), 60000, 10000, self.params.val_size),
                           feature_shape=(28, 28))

    def load(self, split: str):
        if not hasattr(self, "_splits"):
            self.prepare()
        return self._splits[split]
