"""Standard torchvision v2 equivalents of the batched augmentations, for benchmarks.

``reference_transform(name, **params)`` validates ``params`` exactly like ``build_augmentation``
and returns the DataLoader-style transform doing the same thing to one float (3, H, W) image at a
time (``cutmix``, ``mixup``: to a batch ``(images, targets)``). Known differences from the batched
versions: ``color_jitter`` — torchvision applies the four adjustments in a random order per call
(ours is fixed: brightness, contrast, saturation, hue); ``elastic`` — torchvision errors on images
too small for its smoothing kernel (ours caps the radius); ``cutmix`` and ``mixup`` — one λ (and
box) per batch, ``p`` is per batch, and ``label_mixing=False`` has no torchvision equivalent
(ConfigError). ``cutout`` and ``saliencymix`` have none at all. Affine and elastic use
``fill=None`` so that borders match our plain zero-padding ``grid_sample``. ``randaugment``,
``trivialaugment``, ``autoaugment``, ``augmix`` (``jsd=False`` only): the same operations and
tables (torchvision applies them to float images the same way). ``random_erasing``: torchvision
runs after ``Normalize``: ``value="mean"`` maps to its value=0 and ``"random"`` to its N(0, 1)
(the same meaning after Normalize; the DataLoader benchmark feeds [0, 1] images: same cost).
``resizemix``, ``fmix``, ``gridmask``, ``label_smoothing`` have no torchvision equivalent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from ..errors import ConfigError
from .augmix import AugMix
from .compose import build_augmentation
from .erasing import RandomErasing
from .geometric import Affine, Elastic, HorizontalFlip, RandomCrop, RandomResizedCrop
from .mixing import CutMix, Mixup
from .photometric import ColorJitter, GaussianBlur
from .policies import AutoAugment, RandAugment, TrivialAugmentWide


class ResizedCropToInput(torch.nn.Module):
    """v2.RandomResizedCrop back to the input's own H×W."""

    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio = scale, ratio

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        return v2.RandomResizedCrop((h, w), scale=self.scale, ratio=self.ratio)(image)


class PadCropToInput(torch.nn.Module):
    """Zero-pad by ``padding`` then random-crop back to the input's own H×W (v2.RandomCrop)."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        return v2.RandomCrop((h, w), padding=self.padding)(image)


def _maybe(t: Any, p: float) -> Any:
    if p >= 1.0:
        return t
    return v2.RandomApply([t], p=p)


def reference_transform(name: str, **params: Any) -> Any:
    """torchvision v2 transform equivalent to ``build_augmentation([{"name": name, **params}])``.

    Per-image (3, H, W) float in [0, 1] except ``cutmix`` and ``mixup`` (batch ``(images (B, 3,
    H, W), targets (B, K))``). ``p < 1`` wraps in ``v2.RandomApply`` (``equalize`` uses
    ``RandomEqualize(p)``).
    """
    aug = build_augmentation([{"name": name, **params}])
    p = aug.p
    if name == "none":
        return v2.Identity()
    if isinstance(aug, Affine):
        t = v2.RandomAffine(
            degrees=aug.degrees,
            translate=(aug.translate, aug.translate),
            scale=aug.scale,
            shear=aug.shear if aug.shear > 0 else None,
            interpolation=v2.InterpolationMode.BILINEAR,
            fill=None,  # type: ignore[arg-type]
        )
        return _maybe(t, p)
    if isinstance(aug, ColorJitter):
        rng = {
            k: (None if getattr(aug, k) == ident else getattr(aug, k))
            for k, ident in (
                ("brightness", (1.0, 1.0)),
                ("contrast", (1.0, 1.0)),
                ("saturation", (1.0, 1.0)),
                ("hue", (0.0, 0.0)),
            )
        }
        return _maybe(v2.ColorJitter(**rng), p)
    if isinstance(aug, Elastic):
        return _maybe(v2.ElasticTransform(alpha=aug.alpha, sigma=aug.sigma, fill=None), p)  # type: ignore[arg-type]
    if name == "equalize":
        return v2.RandomEqualize(p=p)
    if isinstance(aug, GaussianBlur):
        return _maybe(v2.GaussianBlur(aug.kernel_size, sigma=aug.sigma), p)
    if isinstance(aug, RandomCrop):
        return _maybe(PadCropToInput(aug.padding), p)
    if isinstance(aug, RandomResizedCrop):
        return _maybe(ResizedCropToInput(aug.scale, aug.ratio), p)
    if isinstance(aug, HorizontalFlip):
        return v2.RandomHorizontalFlip(p=p)
    if isinstance(aug, CutMix):
        if not aug.label_mixing:
            raise ConfigError("cutmix: label_mixing=False has no torchvision reference transform")
        return _maybe(v2.CutMix(alpha=aug.alpha), p)
    if isinstance(aug, Mixup):
        if not aug.label_mixing:
            raise ConfigError("mixup: label_mixing=False has no torchvision reference transform")
        return _maybe(v2.MixUp(alpha=aug.alpha), p)
    if isinstance(aug, RandAugment):
        t = v2.RandAugment(aug.num_ops, aug.magnitude, aug.num_magnitude_bins,
                           interpolation=v2.InterpolationMode(aug.interpolation))
        return _maybe(t, p)
    if isinstance(aug, TrivialAugmentWide):
        t = v2.TrivialAugmentWide(aug.num_magnitude_bins,
                                  interpolation=v2.InterpolationMode(aug.interpolation))
        return _maybe(t, p)
    if isinstance(aug, AutoAugment):
        t = v2.AutoAugment(v2.AutoAugmentPolicy(aug.policy),
                           interpolation=v2.InterpolationMode(aug.interpolation))
        return _maybe(t, p)
    if isinstance(aug, AugMix):
        if aug.jsd:
            raise ConfigError("augmix: jsd=True has no torchvision reference transform")
        t = v2.AugMix(aug.severity, aug.mixture_width, aug.chain_depth, aug.alpha, aug.all_ops,
                      interpolation=v2.InterpolationMode(aug.interpolation))
        return _maybe(t, p)
    if isinstance(aug, RandomErasing):
        value: Any = list(aug.value) if isinstance(aug.value, tuple) else aug.value
        if value == "mean":
            value = 0.0
        return v2.RandomErasing(p=p, scale=aug.scale, ratio=aug.ratio, value=value)
    raise ConfigError(f"no reference transform for augmentation '{name}'")
