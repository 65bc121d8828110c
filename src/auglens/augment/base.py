"""Batched augmentations with per-sample random parameters from their own seeded generator.

Contract: an augmentation is called on a whole batch on the training device,
``images`` float (B, 3, H, W) in [0, 1] and ``targets`` float (B, K) label distributions (one-hot
for plain labels), and returns ``(images, targets, log)``. ``log`` maps names to per-sample tensors
of length B (e.g. CutMix's ``lam`` and ``box``) so that the trainer can record them. All randomness
is drawn from ``generator`` (a CPU ``torch.Generator``), never from the global RNG, so that
augmentation randomness is independent of batch order and model initialisation (SPEC §8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Registry

#: name -> Augmentation subclass; constructor keyword arguments are its parameters.
AUGMENTATIONS: Registry = Registry("augmentation")

AugLog = dict[str, Tensor]


class ParameterError(ValueError):
    """An invalid augmentation parameter; ``field`` names it (``build_augmentation`` reports it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Augmentation:
    """Base class. Subclasses implement ``apply`` and set ``name``; ``mixes_labels`` if targets
    change."""

    name: ClassVar[str] = ""
    mixes_labels: ClassVar[bool] = False
    #: Extra augmented views that a consistency loss needs (AugMix with ``jsd=True``: 2). 0: the
    #: trainer calls the augmentation; > 0: it calls ``views`` instead (see ``AugMix.views``).
    consistency_views: int = 0

    def __init__(self, p: float = 1.0) -> None:
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ParameterError("p", f"p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(
                f"{type(self).__name__}: images must be float (B, C, H, W), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if targets.shape[0] != images.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: {images.shape[0]} images but {targets.shape[0]} targets"
            )
        return self.apply(images, targets, generator)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        raise NotImplementedError

    def set_dataset_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Hook for the trainer: the dataset's per-channel mean and std of images in [0, 1], i.e.
        the normalisation applied after augmentation. Default: ignored (``Compose`` forwards it;
        ``cutout`` with ``fill="mean"`` needs it)."""

    def views(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, list[Tensor], AugLog]:
        """``(clean images, targets, [consistency_views extra views], log)`` for consistency
        training; only augmentations with ``consistency_views > 0`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} makes no consistency views")

    def draw_apply_mask(self, batch: int, generator: torch.Generator) -> Tensor:
        """bool (B,) on CPU: which samples get the augmentation (probability ``p``)."""
        return torch.rand(batch, generator=generator) < self.p

    def draw_masked(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, AugLog]:
        """The apply mask, then the subclass's per-sample parameters ``self.draw(B, H, W,
        generator)`` — the generator order of every augmentation that has a ``draw``."""
        b, _, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        return mask, self.draw(b, h, w, generator)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
