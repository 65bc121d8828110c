"""CIFAR-10 / CIFAR-100 from a local copy of the official "python version".

Layout (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    <root>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

``root`` may also be the inner directory itself. Each batch file is a pickled dict with bytes keys:
``b'data'`` uint8 (N, 3072) rows of 1024 red, 1024 green, 1024 blue values (row-major 32×32),
``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` / ``b'coarse_labels'`` (CIFAR-100),
``b'batch_label'`` and ``b'filenames'``. The meta file holds ``b'label_names'`` (CIFAR-10) or
``b'fine_label_names'`` / ``b'coarse_label_names'`` (CIFAR-100). Files are unpickled with a
restricted unpickler that only accepts plain containers and numpy arrays (a file that pickles
anything else is refused).

Splits: test = the official test set; val = ``val_size`` images carved from the official training
set, class-stratified and deterministic (``split_seed``); train = the rest (optionally capped at
``train_size``, also stratified). Images stay 32×32 (upscale in the model, ``model.input_size``).
mean/std: ``normalization="train"`` (default) computes them exactly on the train split;
``"standard"`` uses the commonly quoted constants of the full official training set.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AuglensError, ConfigError
from .base import DATASETS, Dataset, ImageSet, channel_stats

#: Commonly quoted per-channel mean/std of the full official training sets (pixels in [0, 1]).
STANDARD_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta"),
}
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _Refused(pickle.UnpicklingError):
    """A pickle global outside the allow-list."""


class _DataUnpickler(pickle.Unpickler):
    """Unpickles only containers, strings, numbers and numpy arrays; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _Refused(f"refusing to load global '{module}.{name}'")
        if module == "numpy.core.multiarray":  # Python-2-era files; numpy 2 moved it
            try:
                import numpy._core.multiarray as ma
            except ImportError:  # pragma: no cover - numpy 1.x
                import numpy.core.multiarray as ma
            return getattr(ma, name)
        return super().find_class(module, name)


def read_batch(path: str | os.PathLike) -> dict[str, Any]:
    """One official CIFAR pickle file → dict with str keys (bytes keys decoded as ASCII).

    Refuses files that pickle anything but containers and numpy arrays (AuglensError)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _DataUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise AuglensError(f"CIFAR file not found: {path}") from None
    except _Refused as e:
        raise AuglensError(
            f"cannot read CIFAR file {path} safely: {e}; the official files hold only arrays and "
            "lists (re-extract the archive)"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated/garbage pickles raise many types
        raise AuglensError(f"corrupt CIFAR file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise AuglensError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("ascii") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _batch_dir(name: str, root: str | os.PathLike) -> Path:
    inner = _LAYOUT[name][0]
    root = Path(root).expanduser()
    return root if root.name == inner and not (root / inner).is_dir() else root / inner


def _layout_text(name: str) -> str:
    inner, train, test, meta = _LAYOUT[name]
    files = ", ".join([*(train if len(train) < 3 else [train[0] + " … " + train[-1]]), *test, meta])
    return f"<root>/{inner}/ with {files} (the official python version)"


def _missing(name: str, root: str | os.PathLike) -> list[Path]:
    _, train, test, meta = _LAYOUT[name]
    d = _batch_dir(name, root)
    return [d / f for f in (*train, *test, meta) if not (d / f).is_file()]


def _check(name: str, root: str | os.PathLike | None, download: bool) -> None:
    if root is None or not isinstance(root, str | os.PathLike):
        raise ConfigError(f"{name}: root must be a directory path, got {root!r}")
    if download:
        return
    missing = _missing(name, root)
    if missing:
        raise AuglensError(
            f"{name}: data not found: {missing[0]} is missing"
            + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else "")
            + f"; expected {_layout_text(name)} under root={Path(root)}. Extract the official "
            f"archive there, or set data.download=true to fetch it with torchvision"
        )


def _download(name: str, root: Path) -> None:
    try:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise AuglensError(f"{name}: download into {root} failed: {e}") from None


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of ``range(len(labels))`` whose every prefix is as class-balanced as the data
    allows: the r-th image of each class (in a random order from ``seed``) comes before the
    (r+1)-th of any class; within a round, classes in increasing order."""
    n = labels.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    lab = labels[perm]
    by_class = np.argsort(lab, kind="stable")
    sorted_lab = lab[by_class]
    starts = np.searchsorted(sorted_lab, sorted_lab, side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - starts  # rank of each perm position within its class
    order = np.lexsort((lab, rank))
    return perm[order]


def _check_int(name: str, what: str, v: object, lo: int, hi: int | None = None) -> int:
    bad = isinstance(v, bool) or not isinstance(v, int | np.integer)
    if bad or v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name}: {what} must be an integer {rng}, got {v!r}")
    return int(v)


def _read_split(name: str, files: list[Path], label_key: str, n_classes: int):
    images, labels = [], []
    for path in files:
        b = read_batch(path)
        for key in ("data", label_key):
            if key not in b:
                raise AuglensError(
                    f"CIFAR file {path} has no '{key}' entry (keys: {', '.join(sorted(b))}); "
                    f"is it a {name} file?"
                )
        data = b["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
            data.shape[1] != 3072
        ):
            desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
            raise AuglensError(f"CIFAR file {path}: 'data' must be uint8 (N, 3072), got {desc}")
        lab = np.asarray(b[label_key], dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise AuglensError(
                f"CIFAR file {path}: {data.shape[0]} images but {lab.size} labels in '{label_key}'"
            )
        if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
            raise AuglensError(
                f"CIFAR file {path}: labels in [{lab.min()}, {lab.max()}] but the meta file names "
                f"{n_classes} classes (class-count mismatch)"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def _build(
    name: str,
    root: str | os.PathLike,
    val_size: int,
    train_size: int | None,
    split_seed: int,
    normalization: str,
    download: bool,
    label_type: str = "fine",
) -> Dataset:
    t0 = time.perf_counter()
    _check(name, root, download)
    d = _batch_dir(name, root)
    if download and _missing(name, root):
        _download(name, Path(root).expanduser())
        d = _batch_dir(name, root)
        _check(name, root, False)
    if normalization not in ("train", "standard"):
        raise ConfigError(
            f"{name}: normalization must be 'train' or 'standard', got {normalization!r}"
        )
    _, train_files, test_files, meta_file = _LAYOUT[name]
    meta = read_batch(d / meta_file)
    names_key = "label_names" if name == "cifar10" else f"{label_type}_label_names"
    if names_key not in meta:
        raise AuglensError(f"CIFAR meta file {d / meta_file} has no '{names_key}' entry")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    label_key = "labels" if name == "cifar10" else f"{label_type}_labels"
    tr_x, tr_y = _read_split(name, [d / f for f in train_files], label_key, len(class_names))
    te_x, te_y = _read_split(name, [d / f for f in test_files], label_key, len(class_names))
    n = tr_y.shape[0]
    val_size = _check_int(name, "val_size", val_size, 1, n - 1)
    order = stratified_order(tr_y, _check_int(name, "split_seed", split_seed, 0, 2**32 - 1))
    val_idx = np.sort(order[:val_size])
    rest = order[val_size:]
    if train_size is not None:
        rest = rest[: _check_int(name, "train_size", train_size, 1, rest.size)]
    train_idx = np.sort(rest)

    def split(x: np.ndarray, y: np.ndarray, idx: np.ndarray | None = None) -> ImageSet:
        if idx is not None:
            x, y = x[idx], y[idx]
        return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y))

    train = split(tr_x, tr_y, train_idx)
    if normalization == "train":
        mean, std = channel_stats(train.images.numpy())
    else:
        mean, std = STANDARD_STATS[name]
    return Dataset(
        name=name,
        train=train,
        val=split(tr_x, tr_y, val_idx),
        test=split(te_x, te_y),
        class_names=class_names,
        mean=mean,
        std=std,
        info={
            "root": str(d),
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
            "n_test": int(te_y.size),
            "split_seed": int(split_seed),
            "normalization": normalization,
            "label_type": label_type if name == "cifar100" else "labels",
            "build_seconds": time.perf_counter() - t0,
        },
    )


@DATASETS.register("cifar10")
def build_cifar10(
    root: str = "data/cifar10",
    val_size: int = 5000,
    train_size: int | None = None,
    split_seed: int = 0,
    normalization: str = "train",
    download: bool = False,
) -> Dataset:
    """CIFAR-10 from the official python files under ``root``; val carved from train (stratified).

    root: directory holding ``cifar-10-batches-py/`` (or that directory). val_size: images carved
    from the 50 000 training images (class-stratified, from ``split_seed``); train_size: cap on the
    rest (None: all). normalization: "train" (exact stats of the train split) or "standard".
    download: fetch the archive with torchvision when the files are missing (needs internet).
    Images uint8 (N, 3, 32, 32), labels int64; no masks, boxes or concepts.
    """
    return _build("cifar10", root, val_size, train_size, split_seed, normalization, download)


@DATASETS.register("cifar100")
def build_cifar100(
    root: str = "data/cifar100",
    val_size: int = 5000,
    train_size: int | None = None,
    split_seed: int = 0,
    normalization: str = "train",
    download: bool = False,
    label_type: str = "fine",
) -> Dataset:
    """CIFAR-100 from the official python files under ``root`` (``cifar-100-python/``).

    As ``cifar10``; label_type: "fine" (100 classes, default) or "coarse" (20 superclasses).
    """
    if label_type not in ("fine", "coarse"):
        raise ConfigError(f"cifar100: label_type must be 'fine' or 'coarse', got {label_type!r}")
    return _build(
        "cifar100", root, val_size, train_size, split_seed, normalization, download, label_type
    )


def _check_cifar10(root: str = "data/cifar10", download: bool = False, **_: Any) -> None:
    _check("cifar10", root, download)


def _check_cifar100(root: str = "data/cifar100", download: bool = False, **_: Any) -> None:
    _check("cifar100", root, download)


build_cifar10.check = _check_cifar10  # type: ignore[attr-defined]
build_cifar100.check = _check_cifar100  # type: ignore[attr-defined]


def _files(name: str) -> Any:
    def files(root: str | os.PathLike = f"data/{name}", **_: Any
              ) -> tuple[dict[str, list[Path]], Path]:
        """The official batch files each split reads (for the run's keys)."""
        _, train, test, meta = _LAYOUT[name]
        d = _batch_dir(name, root)
        return {"train": [d / f for f in (*train, meta)], "test": [d / f for f in (*test, meta)]}, d

    return files


build_cifar10.files = _files("cifar10")  # type: ignore[attr-defined]
build_cifar100.files = _files("cifar100")  # type: ignore[attr-defined]
