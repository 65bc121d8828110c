"""The data contract every dataset loader returns: uint8 images plus optional ground truth."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import AuglensError
from ..registry import Registry
from .images import LazyImages, take_images

#: name -> builder(cfg: DataConfig) -> Dataset
DATASETS: Registry = Registry("dataset")

CONCEPT_CATEGORIES = ("object", "part", "scene", "material", "texture", "color")


def check_source(name: str, params: dict | None = None) -> None:
    """Cheap check (no decoding) that the files a dataset config points at exist and have the
    expected layout; raises AuglensError naming the missing path and the layout. Builders opt in
    with a ``check`` attribute taking the builder's keyword parameters."""
    builder = DATASETS.get(name)
    check = getattr(builder, "check", None)
    if check is None:
        return
    try:
        check(**(params or {}))
    except TypeError as e:
        raise AuglensError(f"bad parameter for dataset '{name}': {e}") from None


@dataclass
class ImageSet:
    """One split. Shapes: images uint8 (N, 3, H, W); labels int64 (N,).

    ``images`` is a tensor, or for data too large for memory a `LazyImages` (decoded on demand,
    indexed like the tensor: ``images[idx]`` → uint8 (B, 3, H, W), ``len``, ``.shape``).

    Optional ground truth (None where a dataset has none):
    masks bool (N, H, W), True on the object; boxes int64 (N, 4) as (x1, y1, x2, y2) with exclusive
    ends, so the box region is ``[y1:y2, x1:x2]``, or (N, M, 4) for several boxes per image padded
    with empty (0, 0, 0, 0) boxes (masks are then the union of an image's boxes, possibly a lazy
    `BoxMasks`); concepts int16 (N, K, H, W): for each of the dataset's K concept *layers* the
    global concept id of every pixel, 0 = unlabelled.
    """

    images: Tensor | LazyImages
    labels: Tensor
    masks: Tensor | None = None
    boxes: Tensor | None = None
    concepts: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Tensor) -> ImageSet:
        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else take_images(t, idx)

        return ImageSet(
            take_images(self.images, idx),
            self.labels[idx],
            take(self.masks),
            take(self.boxes),
            take(self.concepts),
        )


@dataclass
class Dataset:
    """Train/val/test splits with class names and the normalisation used by every model.

    mean/std: per-channel floats for images scaled to [0, 1]. concept_names[i] /
    concept_categories[i] describe global concept id i (id 0 is "unlabelled"); categories are
    from CONCEPT_CATEGORIES.
    """

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    concept_names: list[str] = field(default_factory=list)
    concept_categories: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[-2:])  # type: ignore[return-value]

    def normalize(self, x: Tensor) -> Tensor:
        """Float images in [0, 1], (B, 3, H, W) → normalised model input."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def channel_stats(images: np.ndarray, source: str = "training split"
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel (mean, std) of uint8 (N, 3, H, W) images scaled to [0, 1]. A channel
    with zero variance (every pixel equal) cannot be normalised: an AuglensError says so."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(3):
        hist = np.bincount(images[:, c].ravel(), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        m = float(p @ values)
        mean.append(m)
        std.append(math.sqrt(max(float(p @ (values - m) ** 2), 0.0)))
    flat = [name for name, sd in zip("RGB", std, strict=True) if sd == 0]
    if flat:
        raise AuglensError(
            f"the {source}'s channel {'/'.join(flat)} has zero variance (every pixel "
            f"{round(mean['RGB'.index(flat[0])] * 255)}): normalising by its standard deviation "
            "would divide by zero; the images are probably constant (check that they decode), "
            "or use the dataset's fixed normalization (e.g. normalization: imagenet / standard)")
    return tuple(mean), tuple(std)  # type: ignore[return-value]


_DATA_CACHE: dict[str, Dataset] = {}


def load_dataset(cfg: Any) -> Dataset:
    """The dataset a config names (``cfg.data``: ``name`` + builder ``params()``), built once
    per process and reused while the same data section is asked for."""
    key = cfg.data.model_dump_json()
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = DATASETS.get(cfg.data.name)(**cfg.data.params())
    return _DATA_CACHE[key]
