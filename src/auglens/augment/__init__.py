"""Batched augmentations with per-sample random parameters (see ``base`` for the contract).

Importing this package registers: none, affine, cutmix, color_jitter, elastic, equalize,
gaussian_blur, random_crop. ``build_augmentation(spec)`` builds one (or a ``Compose``) from a list
of ``{"name": ..., **params}``; ``reference.reference_transform`` gives torchvision equivalents.
"""

from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .compose import Compose, NoAugmentation, build_augmentation
from .geometric import Affine, Elastic, RandomCrop
from .mixing import CutMix
from .photometric import JITTER_ORDER, ColorJitter, Equalize, GaussianBlur

__all__ = [
    "AUGMENTATIONS",
    "Affine",
    "AugLog",
    "Augmentation",
    "ColorJitter",
    "Compose",
    "CutMix",
    "Elastic",
    "Equalize",
    "GaussianBlur",
    "JITTER_ORDER",
    "NoAugmentation",
    "ParameterError",
    "RandomCrop",
    "build_augmentation",
]
