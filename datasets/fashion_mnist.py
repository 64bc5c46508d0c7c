"""Fashion-MNIST (60,000 train + 10,000 test, 28x28, 10 classes), read from IDX files.

Looked for (plain or .gz) in ``root`` if set, else ``resources/FashionMNIST/raw``
(torchvision's layout), then ``/usr/share/datasets/fashion-mnist`` (Debian's package
``dataset-fashion-mnist``: ``apt-get install dataset-fashion-mnist``).  The decoded
content is verified against SHA-256 sums (taken from Debian's package, whose archives are
repackaged; so the sums are of the decoded arrays, not the .gz bytes).
5,000 training images (stratified, ``split_seed``) form the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec
from slabbench.data import load_mnist_like, resources_dir, split_sizes

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SHA256_DECODED = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


@dataclass(frozen=True)
class Params:
    root: str | None = None  #: folder holding the four IDX files
    download: bool = True  #: try torchvision's downloader when files are missing
    val_size: int = 5000
    split_seed: int = 0


class Dataset(_Base):
    Params = Params

    def folders(self) -> list[Path]:
        if self.params.root:
            return [Path(self.params.root)]
        return [resources_dir() / "FashionMNIST" / "raw", DEBIAN_DIR]

    def _download(self) -> None:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(resources_dir()), train=True, download=True)

    def prepare(self) -> None:
        how = ("On Debian/Ubuntu: apt-get install dataset-fashion-mnist; or "
               "torchvision.datasets.FashionMNIST(root='resources', download=True); or set dataset_params.root.")
        self._splits = load_mnist_like("fashion_mnist", self.folders(), SHA256_DECODED, how,
                                       self._download if self.params.download else None,
                                       self.params.val_size, self.params.split_seed)

    def spec(self) -> DatasetSpec:
        return DatasetSpec(name="fashion_mnist", task="classification", input_shape=(1, 28, 28), outputs=10,
                           sizes=split_sizes(getattr(self, "_splits", None), 60000, 10000, self.params.val_size),
                           feature_shape=(28, 28))

    def load(self, split: str):
        if not hasattr(self, "_splits"):
            self.prepare()
        return self._splits[split]
