"""Shared helpers for dataset plugins: fixed splits, IDX files, clear missing-file errors."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from slabbench._plugins import repo_root


class DatasetFilesMissing(FileNotFoundError):
    """Raw files a real data set needs are not on this machine."""


def resources_dir() -> Path:
    """Where downloaded / prepared raw data lives: ``$SLABBENCH_RESOURCES`` or ``<repo>/resources``."""
    env = os.environ.get("SLABBENCH_RESOURCES")
    if env:
        return Path(env)
    root = repo_root()
    return (root / "resources") if root else Path("resources")


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into parts of the given fractions, stratified by ``labels`` (class
    proportions kept in every part); deterministic for a seed.  Fractions must sum to 1."""
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        start = 0
        for p, end in enumerate(bounds):
            parts[p].extend(idx[start:end].tolist())
            start = end
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def split_sizes(splits: dict | None, n_train_official: int, n_test: int, val_size: int) -> dict[str, int]:
    """Split sizes for a spec: those of the loaded ``splits`` ({split: (x, y)}) when loaded, else
    the nominal ones.  A stratified validation split rounds per class, so its size can differ from
    ``val_size`` by a few images (MNIST: 5,001 validation, 54,999 training images at val_size 5,000)."""
    if splits is not None:
        return {k: len(v[1]) for k, v in splits.items()}
    return {"train": n_train_official - val_size, "val": val_size, "test": n_test}


def random_split(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Unstratified version of :func:`stratified_split` (regression targets)."""
    return stratified_split(np.zeros(n), fractions, seed)


def as_tensors(x: np.ndarray, y: np.ndarray, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.ascontiguousarray(y), dtype=torch.int64 if task == "classification" else torch.float32)
    return xt, yt


def read_idx(path: Path) -> tuple[np.ndarray, str]:
    """Read an IDX file (plain or ``.gz``); return the array and the SHA-256 of the decoded bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    digest = hashlib.sha256(raw).hexdigest()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims), digest


def find_idx_files(names: Sequence[str], folders: Sequence[Path], dataset: str, how: str) -> dict[str, Path]:
    """Locate each IDX file ``name`` (plain or ``.gz``) in the first folder that has it.

    Raises :class:`DatasetFilesMissing` naming the missing files, the folders searched and
    ``how`` to get them.
    """
    found: dict[str, Path] = {}
    for name in names:
        for folder in folders:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
            if name in found:
                break
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetFilesMissing(
            f"data set {dataset!r}: missing file(s) {', '.join(missing)} (plain or .gz) in "
            f"{', '.join(str(f) for f in folders)}. {how}"
        )
    return found


def load_idx_set(names: Sequence[str], folders: Sequence[Path], checksums: dict[str, str], dataset: str, how: str) -> dict[str, np.ndarray]:
    """Read IDX files and verify the SHA-256 of their decoded content against ``checksums``."""
    arrays = {}
    for name, path in find_idx_files(names, folders, dataset, how).items():
        arr, digest = read_idx(path)
        expected = checksums.get(name)
        if expected is not None and digest != expected:
            raise ValueError(
                f"data set {dataset!r}: {path} decodes to SHA-256 {digest}, expected {expected} "
                f"(a corrupt or different file; delete it and fetch it again)"
            )
        arrays[name] = arr
    return arrays


MNIST_LIKE_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_mnist_like(dataset: str, folders: Sequence[Path], checksums: dict[str, str], how: str,
                    download: callable | None, val_size: int, split_seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load an MNIST-format data set (IDX files) into train / val / test tensors.

    ``val_size`` images of the official training set, stratified by ``split_seed``, form
    the validation split; the official test set is the test split.  If files are missing
    and ``download`` is given, it is called once (e.g. torchvision's downloader) before
    looking again; if that fails too the error names the files, folders and ``how``.
    """
    try:
        arrays = load_idx_set(MNIST_LIKE_FILES, folders, checksums, dataset, how)
    except DatasetFilesMissing as missing:
        if download is None:
            raise
        try:
            download()
        except Exception as exc:  # network errors come in many types; report them with the files
            raise DatasetFilesMissing(f"{missing} (automatic download failed: {type(exc).__name__}: {exc})") from exc
        arrays = load_idx_set(MNIST_LIKE_FILES, folders, checksums, dataset, how)
    x_train = arrays["train-images-idx3-ubyte"].reshape(-1, 1, 28, 28) / 255.0
    y_train = arrays["train-labels-idx1-ubyte"].astype(np.int64)
    x_test = arrays["t10k-images-idx3-ubyte"].reshape(-1, 1, 28, 28) / 255.0
    y_test = arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    n = len(y_train)
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n}), got {val_size}")
    train_idx, val_idx = stratified_split(y_train, (1 - val_size / n, val_size / n), split_seed)
    return {
        "train": as_tensors(x_train[train_idx], y_train[train_idx], "classification"),
        "val": as_tensors(x_train[val_idx], y_train[val_idx], "classification"),
        "test": as_tensors(x_test, y_test, "classification"),
    }
