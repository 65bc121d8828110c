"""Datasets: the data contract (``ImageSet``, ``Dataset``), the ``DATASETS`` registry, builders."""

from .base import DATASETS, Dataset, ImageSet
from .shapes import build_shapes

__all__ = ["DATASETS", "Dataset", "ImageSet", "build_shapes"]
