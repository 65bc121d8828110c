"""Datasets: the data contract (``ImageSet``, ``Dataset``), the ``DATASETS`` registry, builders.

Built in: ``shapes`` (synthetic). Local data: ``cifar10``, ``cifar100`` (official python files),
``imagefolder`` (class folders, optional VOC boxes). Concept probes for Network Dissection:
`load_broden` / `iter_broden` (Broden layout).
"""

from .base import DATASETS, Dataset, ImageSet, check_source, load_dataset
from .broden import BrodenProbe, iter_broden, load_broden, read_broden_index
from .cifar import build_cifar10, build_cifar100
from .folder import build_imagefolder, read_voc
from .images import BoxMasks, Geometry, LazyImages, iter_batches
from .shapes import build_shapes

__all__ = [
    "DATASETS",
    "BoxMasks",
    "BrodenProbe",
    "Dataset",
    "Geometry",
    "ImageSet",
    "LazyImages",
    "build_cifar10",
    "build_cifar100",
    "build_imagefolder",
    "build_shapes",
    "check_source",
    "iter_batches",
    "iter_broden",
    "load_dataset",
    "load_broden",
    "read_broden_index",
    "read_voc",
]
