"""Batched augmentations with per-sample random parameters (see ``base`` for the contract).

Importing this package registers: none, affine, cutmix, color_jitter, elastic, equalize,
gaussian_blur, random_crop, random_resized_crop, hflip, the mixed-sample cutout, mixup,
saliencymix (``mixing``), resizemix, fmix (``mixing_more``), the automated policies randaugment,
trivialaugment, autoaugment (``policies``) and augmix (``augmix``, with the optional JSD
consistency loss), random_erasing, gridmask (``erasing``) and the label-only label_smoothing
(``labels``).
``build_augmentation(spec)`` builds one (or a ``Compose``) from a list of ``{"name": ...,
**params}``; ``reference.reference_transform`` gives torchvision equivalents.
The trainer passes the dataset's mean/std with ``aug.set_dataset_stats(mean, std)`` (needed by
``cutout``'s default ``fill="mean"``).
"""

from .augmix import AugMix, jsd_consistency_loss
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .compose import Compose, NoAugmentation, build_augmentation
from .erasing import GridMask, RandomErasing
from .geometric import Affine, Elastic, HorizontalFlip, RandomCrop, RandomResizedCrop
from .labels import LabelSmoothing, label_entropy, smoothing_for_entropy
from .mixing import CutMix, Cutout, Mixup, SaliencyMix, spectral_residual_saliency
from .mixing_more import FMix, ResizeMix
from .photometric import JITTER_ORDER, ColorJitter, Equalize, GaussianBlur
from .policies import AutoAugment, RandAugment, TrivialAugmentWide

__all__ = [
    "AUGMENTATIONS",
    "Affine",
    "AugLog",
    "AugMix",
    "Augmentation",
    "AutoAugment",
    "ColorJitter",
    "Compose",
    "CutMix",
    "Cutout",
    "Elastic",
    "Equalize",
    "FMix",
    "GaussianBlur",
    "GridMask",
    "HorizontalFlip",
    "JITTER_ORDER",
    "LabelSmoothing",
    "Mixup",
    "NoAugmentation",
    "ParameterError",
    "RandAugment",
    "RandomCrop",
    "RandomErasing",
    "RandomResizedCrop",
    "ResizeMix",
    "SaliencyMix",
    "TrivialAugmentWide",
    "build_augmentation",
    "jsd_consistency_loss",
    "label_entropy",
    "smoothing_for_entropy",
    "spectral_residual_saliency",
]
