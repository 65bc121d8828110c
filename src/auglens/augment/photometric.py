"""Photometric augmentations: colour jitter, histogram equalisation, Gaussian blur."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ._util import apply_masked, as_int, as_range, gaussian_kernels, jitter_range, separable_blur
from .base import AUGMENTATIONS, AugLog, Augmentation

#: Order in which ``color_jitter`` applies its four adjustments (torchvision randomises it).
JITTER_ORDER = ("brightness", "contrast", "saturation", "hue")


def _grayscale(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma 0.2989 R + 0.587 G + 0.114 B (torchvision ``rgb_to_grayscale``)."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``ratio·x + (1 - ratio)·other`` clamped to [0, 1]; ratio (B, 1, 1, 1)."""
    return (x * ratio + other * (1.0 - ratio)).clamp_(0.0, 1.0)


# Hexcone HSV -> RGB per channel (R, G, B): clamp(sign·|6H - centre| + offset, 0, 1).
_HUE_CENTRE = torch.tensor([3.0, 2.0, 4.0]).view(1, 3, 1, 1)
_HUE_SIGN = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
_HUE_OFFSET = torch.tensor([-1.0, 2.0, 2.0]).view(1, 3, 1, 1)


def _shift_hue(x: Tensor, hue: Tensor) -> Tensor:
    """Rotate the HSV hue of (B, 3, H, W) by ``hue`` (B, 1, 1, 1) turns, keeping S and V.

    Same maths as torchvision ``adjust_hue`` (RGB -> HSV, H += hue mod 1, HSV -> RGB, with its
    tie-breaking max = R, then G, then B) in closed form without building the HSV image:
    channel = min + (max - min)·clamp(sign·|6H' - centre| + offset, 0, 1).
    """
    r, g, b = x.unbind(dim=-3)
    maxc, minc = x.amax(dim=-3), x.amin(dim=-3)
    rng = maxc - minc
    inv = 1.0 / rng.clamp_min(1e-12)  # grey pixels (rng = 0) come out as min = max anyway
    h6 = torch.where(
        maxc == r, (g - b) * inv, torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0)
    )
    h6 = h6.add_(hue.view(-1, 1, 1), alpha=6.0).remainder_(6.0)
    dev = dict(device=x.device, dtype=x.dtype)
    c = (h6.unsqueeze(-3) - _HUE_CENTRE.to(**dev)).abs_().mul_(_HUE_SIGN.to(**dev))
    c = c.add_(_HUE_OFFSET.to(**dev)).clamp_(0.0, 1.0)
    return c.mul_(rng.unsqueeze(-3)).add_(minc.unsqueeze(-3))


@AUGMENTATIONS.register("color_jitter")
class ColorJitter(Augmentation):
    """Per-sample brightness, contrast, saturation, hue jitter with torchvision's definitions.

    Factors per sample: brightness, contrast, saturation ~ U[max(0, 1 - x), 1 + x] for a number
    x (or U[min, max] for a pair); hue ~ U[-x, x] (x <= 0.5). Applied in the FIXED order
    brightness -> contrast -> saturation -> hue (torchvision picks a random order per call); each
    equals torchvision's ``adjust_*``: brightness scales, contrast blends with the image's mean
    grayscale (0.2989 R + 0.587 G + 0.114 B), saturation blends with the grayscale image, hue
    shifts H in HSV; results clamped to [0, 1]. A zero-width range at the identity skips that
    adjustment. Log: ``brightness``, ``contrast``, ``saturation``, ``hue`` factors, ``applied``.
    """

    name = "color_jitter"

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0.4,
        contrast: float | tuple[float, float] = 0.4,
        saturation: float | tuple[float, float] = 0.4,
        hue: float | tuple[float, float] = 0.1,
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        inf = float("inf")
        self.brightness = jitter_range("brightness", brightness, 1.0, inf)
        self.contrast = jitter_range("contrast", contrast, 1.0, inf)
        self.saturation = jitter_range("saturation", saturation, 1.0, inf)
        self.hue = jitter_range("hue", hue, 0.0, 0.5, clip_first_to_zero=False)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        if images.shape[1] != 3:
            raise ValueError(f"color_jitter needs 3-channel RGB images, got {images.shape[1]}")
        b = images.shape[0]
        mask = self.draw_apply_mask(b, generator)
        u = torch.rand(4, b, generator=generator, dtype=torch.float64)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        identity = (1.0, 1.0, 1.0, 0.0)
        factors = {}
        active = []
        for key, (lo, hi), ident, ui in zip(JITTER_ORDER, ranges, identity, u, strict=True):
            factors[key] = torch.where(mask, lo + (hi - lo) * ui, ident).float()
            if (lo, hi) != (ident, ident):
                active.append(key)

        def jitter(x: Tensor, idx: Tensor) -> Tensor:
            def f(key: str) -> Tensor:
                return factors[key][idx].to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)

            if "brightness" in active:
                x = (x * f("brightness")).clamp_(0.0, 1.0)
            if "contrast" in active:
                mean = _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
                x = _blend(x, mean, f("contrast"))
            if "saturation" in active:
                x = _blend(x, _grayscale(x), f("saturation"))
            if "hue" in active:
                x = _shift_hue(x, f("hue"))
            return x

        out = apply_masked(images, mask, jitter) if active else images
        return out, targets, {**factors, "applied": mask}


@AUGMENTATIONS.register("equalize")
class Equalize(Augmentation):
    """Histogram equalisation of each image, each channel separately (torchvision ``equalize``).

    Computed in uint8 (x·255.999 truncated) with PIL's LUT, step = (N - n_max) // 255 for N pixels
    of which n_max take the channel's top value; returns float k/255. On small images the floored
    step saturates the top of the range (32×32: step 3 instead of ~4 maps the brightest ~25% of
    pixels to 1.0), exactly as torchvision/PIL. ``p`` defaults to 0.5 as torchvision
    ``RandomEqualize``. Log: ``applied``.
    """

    name = "equalize"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        mask = self.draw_apply_mask(images.shape[0], generator)

        def equalize(x: Tensor, idx: Tensor) -> Tensor:
            return TF.equalize(x.clamp(0.0, 1.0))

        return apply_masked(images, mask, equalize), targets, {"applied": mask}


@AUGMENTATIONS.register("gaussian_blur")
class GaussianBlur(Augmentation):
    """Gaussian blur with per-sample sigma ~ U(sigma), square odd ``kernel_size``.

    Kernel and reflect padding as torchvision ``gaussian_blur`` (weights exp(-i²/(2σ²)) at integer
    offsets, normalised); batched as two grouped 1-D convolutions. Log: ``sigma``, ``applied``.
    """

    name = "gaussian_blur"

    def __init__(
        self, kernel_size: int = 5, sigma: tuple[float, float] = (0.1, 2.0), p: float = 1.0
    ) -> None:
        super().__init__(p)
        self.kernel_size = as_int("kernel_size", kernel_size, 1, odd=True)
        self.sigma = as_range("sigma", sigma, 1e-12)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b = images.shape[0]
        mask = self.draw_apply_mask(b, generator)
        lo, hi = self.sigma
        sigma = (torch.rand(b, generator=generator, dtype=torch.float64) * (hi - lo) + lo).float()

        def blur(x: Tensor, idx: Tensor) -> Tensor:
            s = sigma[idx].to(device=x.device, dtype=x.dtype)
            return separable_blur(x, gaussian_kernels(self.kernel_size, s))

        out = apply_masked(images, mask, blur)
        return out, targets, {"sigma": torch.where(mask, sigma, 0.0), "applied": mask}
