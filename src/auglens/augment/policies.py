"""Automated augmentation policies with per-sample operations: RandAugment, TrivialAugmentWide,
AutoAugment (torchvision v2 definitions; the operations and magnitude tables are in
``policy_ops``; AugMix is in ``augmix``).

Each sample draws its own operation(s), magnitude bin and sign from the augmentation's generator
(torchvision draws them per image too, from the global RNG); the operations run batched on the
images' device, grouped by operation. Logs: ``op`` (global op id, ``policy_ops.OPS``: 0 =
Identity) and ``magnitude`` (signed, float32), one column per operation slot, plus ``applied``;
a sample that is not applied logs Identity / 0 and keeps its image bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._util import as_int
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .policy_ops import IDENTITY, OP_ID, SPACES, apply_ops

INTERPOLATIONS = ("nearest", "bilinear")


def as_interpolation(v: Any) -> str:
    if v not in INTERPOLATIONS:
        raise ParameterError(
            "interpolation", f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {v!r}"
        )
    return str(v)


def check_rgb(name: str, images: Tensor) -> None:
    if images.shape[1] != 3:
        raise ValueError(f"{name} needs 3-channel RGB images, got {images.shape[1]} channels")


class _Policy(Augmentation):
    """Shared: draw the apply mask, then each policy's (B, slots) ops and magnitudes
    (`draw_ops`, in that generator order), apply them slot by slot, log them."""

    interpolation: str

    def draw_ops(self, b: int, h: int, w: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, AugLog]:
        """(op ids, magnitudes) each (B, slots), and extra log entries."""
        raise NotImplementedError

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        check_rgb(self.name, images)
        b, _, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        op, mag, extra = self.draw_ops(b, h, w, generator)
        out, log = self.run(images, mask, op, mag)
        return out, targets, log | {k: torch.where(mask, v, -1) for k, v in extra.items()}

    def run(self, images: Tensor, mask: Tensor, op: Tensor, mag: Tensor) -> tuple[Tensor, AugLog]:
        op = torch.where(mask[:, None], op, IDENTITY)
        mag = torch.where(mask[:, None] & (op != IDENTITY), mag, 0.0)
        out = images
        for k in range(op.shape[1]):  # a copy at the first op that changes something
            out = apply_ops(out, op[:, k], mag[:, k], self.interpolation, inplace=out is not images)
        return out, {"op": op, "magnitude": mag.float(), "applied": mask}


@AUGMENTATIONS.register("randaugment")
class RandAugment(_Policy):
    """RandAugment (Cubuk et al. 2020) as torchvision v2 ``RandAugment``, per sample.

    Each sample applies ``num_ops`` operations in sequence, each chosen uniformly from the 14 of
    torchvision's space (Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast,
    Sharpness, Posterize, Solarize, AutoContrast, Equalize) with the magnitude of bin
    ``magnitude`` of ``num_magnitude_bins`` (negated with probability 1/2 for signed ops).
    Geometric ops use ``interpolation`` (torchvision default "nearest") and fill 0. Defaults are
    torchvision's (2, 9, 31). Log: ``op``, ``magnitude`` (B, num_ops), ``applied``.
    """

    name = "randaugment"

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        interpolation: str = "nearest",
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.num_ops = as_int("num_ops", num_ops, 0)
        self.num_magnitude_bins = as_int("num_magnitude_bins", num_magnitude_bins, 2)
        self.magnitude = as_int("magnitude", magnitude, 0)
        if self.magnitude >= self.num_magnitude_bins:
            raise ParameterError(
                "magnitude",
                f"magnitude must be a bin in [0, num_magnitude_bins - 1 = "
                f"{self.num_magnitude_bins - 1}], got {magnitude}",
            )
        self.interpolation = as_interpolation(interpolation)

    def draw_ops(self, b: int, h: int, w: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, AugLog]:
        space = SPACES["randaugment"]
        local = torch.randint(0, len(space.ops), (b, self.num_ops), generator=generator)
        sign_u = torch.rand(b, self.num_ops, generator=generator, dtype=torch.float64)
        bins = torch.full_like(local, self.magnitude)
        return *space.draw(local, bins, sign_u, self.num_magnitude_bins, h, w), {}


@AUGMENTATIONS.register("trivialaugment")
class TrivialAugmentWide(_Policy):
    """TrivialAugment (Müller & Hutter 2021) as torchvision v2 ``TrivialAugmentWide``, per sample.

    Each sample applies one operation chosen uniformly from the 14 of the wide space (as
    RandAugment's, with wider ranges: shear 0.99, translate 32 px, rotate 135°, colour factors
    0.99, posterize down to 2 bits) with a uniformly drawn magnitude bin of
    ``num_magnitude_bins`` (sign flipped with probability 1/2 for signed ops). Log: ``op``,
    ``magnitude`` (B, 1), ``applied``.
    """

    name = "trivialaugment"

    def __init__(
        self, num_magnitude_bins: int = 31, interpolation: str = "nearest", p: float = 1.0
    ) -> None:
        super().__init__(p)
        self.num_magnitude_bins = as_int("num_magnitude_bins", num_magnitude_bins, 2)
        self.interpolation = as_interpolation(interpolation)

    def draw_ops(self, b: int, h: int, w: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, AugLog]:
        space = SPACES["trivialaugment"]
        local = torch.randint(0, len(space.ops), (b, 1), generator=generator)
        bins = torch.randint(0, self.num_magnitude_bins, (b, 1), generator=generator)
        sign_u = torch.rand(b, 1, generator=generator, dtype=torch.float64)
        return *space.draw(local, bins, sign_u, self.num_magnitude_bins, h, w), {}


# (op, probability, magnitude bin of 10 or None) pairs: torchvision's AutoAugmentPolicy tables.
_N = None
AUTOAUGMENT_POLICIES: dict[str, list[tuple[tuple[str, float, int | None], ...]]] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, _N)),
        (("Equalize", 0.8, _N), ("Equalize", 0.6, _N)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, _N), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, _N), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, _N)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, _N)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, _N), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, _N)),
        (("Equalize", 0.0, _N), ("Equalize", 0.8, _N)),
        (("Invert", 0.6, _N), ("Equalize", 1.0, _N)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, _N)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, _N)),
        (("Color", 0.4, 0), ("Equalize", 0.6, _N)),
        (("Equalize", 0.4, _N), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, _N)),
        (("Invert", 0.6, _N), ("Equalize", 1.0, _N)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, _N), ("Equalize", 0.6, _N)),
    ],
    "cifar10": [
        (("Invert", 0.1, _N), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, _N), ("Equalize", 0.9, _N)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, _N), ("Equalize", 0.5, _N)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, _N), ("AutoContrast", 0.4, _N)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, _N)),
        (("Equalize", 0.2, _N), ("AutoContrast", 0.6, _N)),
        (("Equalize", 0.2, _N), ("Equalize", 0.6, _N)),
        (("Color", 0.9, 9), ("Equalize", 0.6, _N)),
        (("AutoContrast", 0.8, _N), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, _N)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, _N), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, _N), ("Invert", 0.1, _N)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, _N)),
    ],
    "svhn": [
        (("ShearX", 0.9, 4), ("Invert", 0.2, _N)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, _N)),
        (("Equalize", 0.6, _N), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, _N), ("Equalize", 0.6, _N)),
        (("Equalize", 0.6, _N), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, _N)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, _N)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, _N), ("AutoContrast", 0.8, _N)),
        (("Equalize", 0.6, _N), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, _N)),
        (("Equalize", 0.9, _N), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, _N), ("Equalize", 0.6, _N)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, _N), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, _N), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, _N)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, _N)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, _N)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, _N)),
    ],
}


@AUGMENTATIONS.register("autoaugment")
class AutoAugment(_Policy):
    """AutoAugment (Cubuk et al. 2019) learned policies as torchvision v2 ``AutoAugment``, per
    sample.

    ``policy``: "imagenet" (default, torchvision's default), "cifar10" or "svhn" — 25
    sub-policies of two (operation, probability, magnitude bin of 10) each. Each sample draws one
    sub-policy uniformly; each of its two operations is applied if U[0, 1) <= its probability,
    with the bin's magnitude, negated with probability 1/2 for signed ops. Log: ``subpolicy``
    (B,), ``op`` (B, 2) (Identity where an operation was skipped), ``magnitude`` (B, 2),
    ``applied``.
    """

    name = "autoaugment"

    def __init__(
        self, policy: str = "imagenet", interpolation: str = "nearest", p: float = 1.0
    ) -> None:
        super().__init__(p)
        if policy not in AUTOAUGMENT_POLICIES:
            raise ParameterError(
                "policy", f"policy must be one of {', '.join(AUTOAUGMENT_POLICIES)}, got {policy!r}"
            )
        self.policy = policy
        self.interpolation = as_interpolation(interpolation)

    def tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """(global op id, probability, magnitude bin) each (25, 2); bin 0 for ops without one."""
        rows = AUTOAUGMENT_POLICIES[self.policy]
        ops = torch.tensor([[OP_ID[o] for o, _, _ in r] for r in rows])
        prob = torch.tensor([[q for _, q, _ in r] for r in rows], dtype=torch.float64)
        bins = torch.tensor([[0 if m is None else m for _, _, m in r] for r in rows])
        return ops, prob, bins

    def draw_ops(self, b: int, h: int, w: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, AugLog]:
        space = SPACES["autoaugment"]
        sub = torch.randint(0, 25, (b,), generator=generator)
        apply_u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
        sign_u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
        ops, prob, bins = self.tables()
        ids = space.magnitudes(10, h, w)[0]
        to_local = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        to_local[ids] = torch.arange(len(ids))
        local = to_local[ops[sub]]
        op, mag = space.draw(local, bins[sub], sign_u, 10, h, w)
        return torch.where(apply_u <= prob[sub], op, IDENTITY), mag, {"subpolicy": sub}
