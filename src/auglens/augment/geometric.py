"""Geometric augmentations: affine, elastic, random crop, random resized crop, horizontal flip —
one batched warp/gather per call."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._util import (
    apply_masked,
    area_aspect_draws,
    as_float,
    as_int,
    as_range,
    gaussian_kernels,
    place_uniform,
    separable_blur,
    uniform,
)
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError


def affine_theta(
    angle: Tensor, tx: Tensor, ty: Tensor, scale: Tensor, shear: Tensor, height: int, width: int
) -> Tensor:
    """(B, 2, 3) ``F.affine_grid`` matrices (align_corners=False) of torchvision's ``F.affine``
    about the image centre: ``angle`` degrees (positive = clockwise on screen, as ``F.affine``),
    ``tx``/``ty`` pixels (+x right, +y down), ``scale`` factor, ``shear`` x-shear degrees
    (y-shear 0). All inputs (B,) float64."""
    rot = torch.deg2rad(angle)
    tan_sx = torch.tan(torch.deg2rad(shear))
    # torchvision _get_inverse_affine_matrix with center (0, 0) and shear_y = 0.
    a = torch.cos(rot)
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot)
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    m2 = -(m0 * tx + m1 * ty)
    m5 = -(m3 * tx + m4 * ty)
    # Pixel coordinates about the centre -> affine_grid's normalised coordinates.
    row0 = torch.stack([m0, m1 * height / width, m2 * 2.0 / width], dim=1)
    row1 = torch.stack([m3 * width / height, m4, m5 * 2.0 / height], dim=1)
    return torch.stack([row0, row1], dim=1)


@AUGMENTATIONS.register("affine")
class Affine(Augmentation):
    """Random affine warp per sample (torchvision ``RandomAffine`` parameters), bilinear, zero fill.

    angle ~ U(-degrees, degrees) (positive = clockwise, torchvision ``F.affine``); tx, ty ~
    U(-translate·W, translate·W), U(-translate·H, translate·H) rounded to whole pixels (as
    torchvision); scale ~ U(scale);
    x-shear ~ U(-shear, shear) degrees. One ``affine_grid`` + ``grid_sample`` (bilinear, zeros,
    align_corners=False) for the batch. Log: ``angle``, ``tx``, ``ty``, ``scale``, ``shear``,
    ``applied`` (identity values where not applied).
    """

    name = "affine"

    def __init__(
        self,
        degrees: float = 15.0,
        translate: float = 0.1,
        scale: tuple[float, float] = (0.9, 1.1),
        shear: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.degrees = as_float("degrees", degrees, 0.0, 180.0)
        self.translate = as_float("translate", translate, 0.0, 1.0)
        self.scale = as_range("scale", scale, 1e-6)
        self.shear = as_float("shear", shear, 0.0, 89.0)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        angle = uniform(b, -self.degrees, self.degrees, generator)
        tx = uniform(b, -self.translate * w, self.translate * w, generator).round()
        ty = uniform(b, -self.translate * h, self.translate * h, generator).round()
        scale = uniform(b, *self.scale, generator)
        shear = uniform(b, -self.shear, self.shear, generator)
        angle, tx, ty, shear = (torch.where(mask, v, 0.0) for v in (angle, tx, ty, shear))
        scale = torch.where(mask, scale, 1.0)
        theta = affine_theta(angle, tx, ty, scale, shear, h, w)

        def warp(x: Tensor, idx: Tensor) -> Tensor:
            th = theta[idx].to(device=x.device, dtype=x.dtype)
            grid = F.affine_grid(th, list(x.shape), align_corners=False)
            return F.grid_sample(
                x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )

        out = apply_masked(images, mask, warp)
        log = {
            "angle": angle.float(),
            "tx": tx.long(),
            "ty": ty.long(),
            "scale": scale.float(),
            "shear": shear.float(),
            "applied": mask,
        }
        return out, targets, log


@AUGMENTATIONS.register("elastic")
class Elastic(Augmentation):
    """Random elastic warp per sample, torchvision ``ElasticTransform`` convention.

    Per sample and axis: noise U(-1, 1) per pixel, smoothed by a Gaussian of ``sigma`` (kernel
    ``int(8·sigma + 1)`` made odd, reflect padding; the radius is capped at ``min(H, W) - 1`` for
    tiny images), times ``alpha / W`` (x) or ``alpha / H`` (y) in ``grid_sample``'s normalised
    [-1, 1] coordinates (so ``alpha`` is ~2x the peak pixel displacement before smoothing);
    bilinear, zero padding, align_corners=False. Log: ``applied``.
    """

    name = "elastic"

    def __init__(self, alpha: float = 50.0, sigma: float = 5.0, p: float = 1.0) -> None:
        super().__init__(p)
        self.alpha = as_float("alpha", alpha, 0.0)
        self.sigma = as_float("sigma", sigma, 0.0)

    def kernel_size(self, height: int, width: int) -> int:
        """Odd smoothing kernel size: ``int(8·sigma + 1)`` (+1 if even), radius capped to fit."""
        k = int(8 * self.sigma + 1)
        k += 1 - k % 2
        return min(k, 2 * (min(height, width) - 1) + 1)

    def draw_displacement(
        self, batch: int, height: int, width: int, generator: torch.Generator
    ) -> Tensor:
        """float32 (B, H, W, 2) normalised displacement (x, y) on CPU, from ``generator``."""
        noise = torch.rand(batch, 2, height, width, generator=generator) * 2 - 1
        return self.smooth_displacement(noise)

    def smooth_displacement(self, noise: Tensor) -> Tensor:
        """Noise (B, 2, H, W) in [-1, 1] -> displacement (B, H, W, 2) (smoothed and scaled)."""
        _, _, h, w = noise.shape
        if self.sigma > 0:
            k = self.kernel_size(h, w)
            sigma = torch.full((noise.shape[0],), self.sigma, dtype=noise.dtype)
            noise = separable_blur(noise, gaussian_kernels(k, sigma.to(noise.device)))
        gain = torch.tensor(
            [self.alpha / w, self.alpha / h], dtype=noise.dtype, device=noise.device
        )
        return noise.permute(0, 2, 3, 1) * gain

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        noise = torch.rand(b, 2, h, w, generator=generator) * 2 - 1

        def warp(x: Tensor, idx: Tensor) -> Tensor:
            disp = self.smooth_displacement(noise[idx].to(device=x.device, dtype=x.dtype))
            eye = torch.eye(2, 3, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
            grid = F.affine_grid(eye, list(x.shape), align_corners=False) + disp
            return F.grid_sample(
                x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )

        return apply_masked(images, mask, warp), targets, {"applied": mask}


@AUGMENTATIONS.register("random_crop")
class RandomCrop(Augmentation):
    """Zero-pad by ``padding`` pixels, crop back to H×W at a per-sample offset (exact gather).

    top, left ~ uniform integers in [0, 2·padding] (position of the crop in the padded image;
    ``padding`` = no shift), as torchvision ``RandomCrop(size=(H, W), padding=padding)``.
    Log: ``top``, ``left`` (int64), ``applied``.
    """

    name = "random_crop"

    def __init__(self, padding: int = 4, p: float = 1.0) -> None:
        super().__init__(p)
        self.padding = as_int("padding", padding, 0)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, c, h, w = images.shape
        pad = self.padding
        mask = self.draw_apply_mask(b, generator)
        top = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        top = torch.where(mask, top, pad)
        left = torch.where(mask, left, pad)

        def crop(x: Tensor, idx: Tensor) -> Tensor:
            n = x.shape[0]
            wp = w + 2 * pad
            padded = F.pad(x, (pad, pad, pad, pad)).reshape(n, c, -1)
            rows = top[idx, None] + torch.arange(h)  # (n, H)
            cols = left[idx, None] + torch.arange(w)  # (n, W)
            flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w)
            flat = flat.to(x.device).expand(n, c, h * w)
            return padded.gather(2, flat).view(n, c, h, w)

        out = apply_masked(images, mask, crop) if pad > 0 else images
        return out, targets, {"top": top, "left": left, "applied": mask}


@AUGMENTATIONS.register("hflip")
class HorizontalFlip(Augmentation):
    """Mirror left–right with probability ``p`` per sample (torchvision
    ``RandomHorizontalFlip``, default p = 0.5). Log: ``applied``."""

    name = "hflip"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        mask = self.draw_apply_mask(images.shape[0], generator)
        out = apply_masked(images, mask, lambda x, idx: x.flip(-1))
        return out, targets, {"applied": mask}


def resized_crop_params(
    b: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator, attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample (top, left, h, w) int64 (B,) by torchvision ``RandomResizedCrop.get_params``:
    area fraction ~ U(scale), log aspect ~ U(log ratio), w = round(√(A·r)), h = round(√(A/r));
    the first of ``attempts`` tries that fits is used, placed uniformly; else the centre crop
    with the aspect clamped to ``ratio`` (torchvision's fallback)."""
    target, aspect = area_aspect_draws(b, height, width, scale, ratio, generator, attempts)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.double().argmax(1), -1)
    pick = first.clamp_min(0)[:, None]
    w_s, h_s = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    top, left = place_uniform(height, width, h_s, w_s, generator)
    # fallback: centre crop, aspect clamped to the ratio range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    miss = first < 0
    h_s = torch.where(miss, float(fh), h_s)
    w_s = torch.where(miss, float(fw), w_s)
    top = torch.where(miss, float((height - fh) // 2), top)
    left = torch.where(miss, float((width - fw) // 2), left)
    return top.long(), left.long(), h_s.long(), w_s.long()


def _source_coords(start: Tensor, length: Tensor, out: int) -> Tensor:
    """(B, out) float64 source pixel coordinates of ``F.interpolate(crop, out, 'bilinear',
    align_corners=False)`` for crops [start, start + length): clamped to the crop like
    PyTorch's upsample kernel, so sampling never blends in a pixel outside the crop."""
    o = torch.arange(out, dtype=torch.float64)
    src = (o[None] + 0.5) * (length[:, None].double() / out) - 0.5
    src = torch.minimum(src.clamp_min(0.0), (length[:, None] - 1).double())
    return src + start[:, None].double()


@AUGMENTATIONS.register("random_resized_crop")
class RandomResizedCrop(Augmentation):
    """torchvision ``RandomResizedCrop(size=(H, W), scale, ratio)`` per sample: a crop chosen by
    `resized_crop_params`, resized back to H×W bilinearly (``align_corners=False``; crops are never
    larger than the image, so antialiasing never applies), in one ``grid_sample`` for the batch,
    equal to cropping then ``F.interpolate`` per image. Log: ``top``, ``left``, ``height``,
    ``width`` (int64), ``applied``."""

    name = "random_resized_crop"

    def __init__(
        self,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.scale = as_range("scale", scale, 1e-6)
        if self.scale[1] > 1.0:
            raise ParameterError("scale", f"must lie in (0, 1], got {scale}")
        self.ratio = as_range("ratio", ratio, 1e-6)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        top, left, ch, cw = resized_crop_params(b, h, w, self.scale, self.ratio, generator)
        top, left = torch.where(mask, top, 0), torch.where(mask, left, 0)
        ch, cw = torch.where(mask, ch, h), torch.where(mask, cw, w)
        ys = _source_coords(top, ch, h)  # (B, H) absolute rows
        xs = _source_coords(left, cw, w)  # (B, W) absolute columns

        def warp(x: Tensor, idx: Tensor) -> Tensor:
            gx = (2.0 * xs[idx] / max(w - 1, 1) - 1.0).to(device=x.device, dtype=x.dtype)
            gy = (2.0 * ys[idx] / max(h - 1, 1) - 1.0).to(device=x.device, dtype=x.dtype)
            n = x.shape[0]
            grid = torch.stack(
                [gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=-1
            )
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                 align_corners=True)

        out = apply_masked(images, mask, warp)
        log = {"top": top, "left": left, "height": ch, "width": cw, "applied": mask}
        return out, targets, log
