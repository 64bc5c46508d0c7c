"""CIFAR-10 (50,000 train + 10,000 test, 3x32x32, 10 classes) through torchvision.

Read from ``resources/cifar-10-batches-py`` (torchvision's layout; integrity checked by
torchvision's MD5 sums).  If absent and ``download`` is true, torchvision downloads it;
without a network the error says what to put where.  Images are scaled to [0, 1] and
normalised per channel with the training mean and sd; 5,000 training images (stratified,
``split_seed``) form the validation split.  Meant for GPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slabbench.api import Dataset as _Base
from slabbench.api import DatasetSpec
from slabbench.data import DatasetFilesMissing, as_tensors, resources_dir, stratified_split

@dataclass(frozen=True)
class Params:
    root: str | None = None  #: folder that holds cifar-10-batches-py/; default resources/
    download: bool = True
    val_size: int = 5000
    split_seed: int = 0


class Dataset(_Base):
    Params = Params

    def prepare(self) -> None:
        import http.client
        import tarfile
        from pathlib import Path

        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import check_integrity

        root = self.params.root or str(resources_dir())
        folder = Path(root) / "cifar-10-batches-py"
        checksums = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]

        def damaged() -> list[str]:  # missing, or not the MD5 sum torchvision expects
            return [name for name, md5 in checksums if not check_integrity(str(folder / name), md5)]

        def unavailable(what: str, exc: BaseException | None) -> DatasetFilesMissing:
            why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
            return DatasetFilesMissing(
                f"data set 'cifar10': {what} in {folder}{why}. Get cifar-10-python.tar.gz from the CIFAR-10 home "
                f"page and unpack it in {root}, or set dataset_params.root.")

        bad = damaged()
        if bad and not self.params.download:
            raise unavailable(f"files {', '.join(bad)} missing or corrupt (download: false)", None)
        if bad:
            # torchvision re-extracts a good cifar-10-python.tar.gz in root, else downloads it; only a
            # failed download counts as files missing: any other error is a bug and propagates
            try:
                CIFAR10(root, train=True, download=True)
            except (OSError, RuntimeError, tarfile.TarError, http.client.HTTPException) as exc:  # URLError: an OSError
                raise unavailable(f"files {', '.join(bad)} missing or corrupt and could not be downloaded", exc) from exc
            bad = damaged()
            if bad:
                raise unavailable(f"files {', '.join(bad)} still missing or corrupt after the download", None)
        train = CIFAR10(root, train=True, download=False)
        test = CIFAR10(root, train=False, download=False)
        x = np.asarray(train.data, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
        y = np.asarray(train.targets)
        xt = np.asarray(test.data, dtype=np.float32).transpose(0, 3, 1, 2) / 255.0
        yt = np.asarray(test.targets)
        tr, va = stratified_split(y, (1 - self.params.val_size / len(y), self.params.val_size / len(y)), self.params.split_seed)
        mean = x[tr].mean(axis=(0, 2, 3), keepdims=True)
        sd = x[tr].std(axis=(0, 2, 3), keepdims=True)
        norm = lambda a: (a - mean) / sd  # noqa: E731
        self._splits = {
            "train": as_tensors(norm(x[tr]), y[tr], "classification"),
            "val": as_tensors(norm(x[va]), y[va], "classification"),
            "test": as_tensors(norm(xt), yt, "classification"),
        }

    def spec(self) -> DatasetSpec:
        return DatasetSpec(name="cifar10", task="classification", input_shape=(3, 32, 32), outputs=10,
                           sizes={"train": 50000 - self.params.val_size, "val": self.params.val_size, "test": 10000})

    def load(self, split: str):
        if not hasattr(self, "_splits"):
            self.prepare()
        return self._splits[split]
