"""Batched augmentations with per-sample random parameters (see ``base`` for the contract).

Importing this package registers: none, affine, cutmix, color_jitter, elastic, equalize,
gaussian_blur, random_crop, and the mixed-sample cutout, mixup, saliencymix (``mixing``).
``build_augmentation(spec)`` builds one (or a ``Compose``) from a list of ``{"name": ...,
**params}``; ``reference.reference_transform`` gives torchvision equivalents.
The trainer passes the dataset's mean/std with ``aug.set_dataset_stats(mean, std)`` (needed by
``cutout``'s default ``fill="mean"``).
"""

from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .compose import Compose, NoAugmentation, build_augmentation
from .geometric import Affine, Elastic, HorizontalFlip, RandomCrop, RandomResizedCrop
from .mixing import CutMix, Cutout, Mixup, SaliencyMix, spectral_residual_saliency
from .photometric import JITTER_ORDER, ColorJitter, Equalize, GaussianBlur

__all__ = [
    "AUGMENTATIONS",
    "Affine",
    "AugLog",
    "Augmentation",
    "ColorJitter",
    "Compose",
    "CutMix",
    "Cutout",
    "Elastic",
    "Equalize",
    "GaussianBlur",
    "HorizontalFlip",
    "JITTER_ORDER",
    "Mixup",
    "NoAugmentation",
    "ParameterError",
    "RandomCrop",
    "RandomResizedCrop",
    "SaliencyMix",
    "build_augmentation",
    "spectral_residual_saliency",
]
