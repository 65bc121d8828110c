"""Information-dropping augmentations without a partner image: Random Erasing (torchvision v2
``RandomErasing``) and GridMask (authors' code, ``dvlab-research/GridMask``), per sample.

Both erase to values defined in *normalised* space in their references (they run after
``Normalize``): 0 there is the dataset mean here (we augment [0, 1] images before normalising), so
the default fills need ``set_dataset_stats(mean, std)`` (the trainer calls it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._util import (
    _is_number,
    area_aspect_draws,
    as_float,
    as_int,
    as_range,
    place_uniform,
    uniform,
)
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .mixing import box_area_fraction, box_masks


class _DatasetStats:
    """Keeps the dataset's per-channel mean and std (of [0, 1] images) for fills."""

    name: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def set_dataset_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store the dataset mean and std (three numbers each; mean in [0, 1], std > 0)."""
        try:
            m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        except (TypeError, ValueError):
            m = s = ()
        if len(m) != 3 or len(s) != 3 or not all(0 <= v <= 1 for v in m) or min(s) <= 0:
            raise ValueError(
                f"{self.name}: dataset mean/std must be three numbers each (mean in [0, 1], "
                f"std > 0), got {mean!r}, {std!r}"
            )
        self.mean, self.std = m, s

    def stats(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) as (1, 3, 1, 1) tensors on the images' device."""
        if self.mean is None or self.std is None:
            raise RuntimeError(
                f"{self.name}: the fill needs the dataset mean/std; call "
                "set_dataset_stats(mean, std) first (the trainer's job)"
            )
        if images.shape[1] != 3:
            raise ValueError(f"{self.name}: the fill has 3 channels, images have {images.shape[1]}")
        kw = dict(dtype=images.dtype, device=images.device)
        return (torch.tensor(self.mean, **kw).view(1, 3, 1, 1),  # type: ignore[arg-type]
                torch.tensor(self.std, **kw).view(1, 3, 1, 1))  # type: ignore[arg-type]


def _as_value(v: Any) -> str | tuple[float, float, float]:
    if v in ("mean", "random"):
        return str(v)
    ok = (
        isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 3
        and all(_is_number(x) and 0.0 <= x <= 1.0 for x in v)
    )
    if not ok:
        raise ParameterError(
            "value",
            'value must be "mean" (torchvision\'s value=0 after Normalize), "random" (N(0, 1) '
            f"after Normalize) or three numbers (R, G, B) in [0, 1], got {v!r}",
        )
    return (float(v[0]), float(v[1]), float(v[2]))


def erasing_boxes(
    b: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator, attempts: int = 10,
) -> Tensor:
    """torchvision ``RandomErasing.make_params`` per sample: area fraction ~ U(scale), aspect
    r = exp(U(log ratio)), h = round(√(A·r)), w = round(√(A/r)); the first of ``attempts`` with
    h < H and w < W is placed at top ~ U{0..H-h}, left ~ U{0..W-w}; none fits -> no erasing (empty
    box). Returns int64 boxes (B, 4) (x1, y1, x2, y2), ends exclusive."""
    target, aspect = area_aspect_draws(b, height, width, scale, ratio, generator, attempts)
    h = torch.round(torch.sqrt(target * aspect))
    w = torch.round(torch.sqrt(target / aspect))
    ok = (h < height) & (w < width)
    found = ok.any(1)
    pick = ok.double().argmax(1, keepdim=True)
    h_s, w_s = h.gather(1, pick)[:, 0], w.gather(1, pick)[:, 0]
    top, left = place_uniform(height, width, h_s, w_s, generator)
    boxes = torch.stack([left, top, left + w_s, top + h_s], dim=1).long()
    return torch.where(found[:, None], boxes, 0)


@AUGMENTATIONS.register("random_erasing")
class RandomErasing(_DatasetStats, Augmentation):
    """Random Erasing (Zhong et al. 2020) as torchvision v2 ``RandomErasing``, per sample.

    With probability ``p`` (torchvision default 0.5) a box from :func:`erasing_boxes` (area
    fraction ~ U(``scale``), aspect ~ log-uniform(``ratio``)) is erased to ``value``: "mean"
    (default; torchvision's default value=0 applied after Normalize), "random" (per pixel and
    channel N(0, 1) after Normalize, i.e. mean + std·z here, NOT clipped to [0, 1], as the
    reference), or (R, G, B) in [0, 1]. When none of the 10 attempts fits nothing is erased (as
    torchvision). Log: ``box`` int64 (B, 4), ``lam`` = unerased fraction, ``applied``.
    """

    name = "random_erasing"

    def __init__(
        self,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: str | tuple[float, float, float] = "mean",
        p: float = 0.5,
    ) -> None:
        super().__init__(p)
        self.scale = as_range("scale", scale, 0.0, 1.0)
        self.ratio = as_range("ratio", ratio, 1e-6)
        self.value = _as_value(value)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, c, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        boxes = erasing_boxes(b, h, w, self.scale, self.ratio, generator)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = torch.where((mask & (area > 0))[:, None], boxes, 0)
        area = torch.where(mask, area, 0)
        log = {"box": boxes, "lam": (1.0 - box_area_fraction(boxes, h, w)).float(),
               "applied": mask}
        if self.value == "random":  # drawn even if nothing is erased: a fixed draw count
            z = torch.randn(int(area.sum()) * c, generator=generator)
        if not bool((area > 0).any()):
            return images, targets, log
        region = box_masks(boxes, h, w, images.device)
        if self.value == "random":
            mean, std = (t.expand(b, c, h, w) for t in self.stats(images))
            sel = region.expand(b, c, h, w)
            # Boolean indexing visits (b, c, y, x) in row-major order: sample i gets its own
            # (C, h_i, w_i) block of z, like torchvision's per-image normal_() tensor.
            out = images.clone()
            out[sel] = mean[sel] + std[sel] * z.to(device=images.device, dtype=images.dtype)
            return out, targets, log
        if self.value == "mean":
            fill = self.stats(images)[0]
        else:
            fill = torch.tensor(self.value, dtype=images.dtype, device=images.device)
            fill = fill.view(1, 3, 1, 1)
        return torch.where(region, fill, images), targets, log


# ---------------------------------------------------------------- gridmask


@functools.lru_cache(maxsize=1024)
def _pil_rotation_fixed(angle: int, width: int, height: int) -> tuple[int, ...]:
    """PIL ``Image.rotate(angle)`` (NEAREST, about (W/2, H/2), no expand) as its 16.16 fixed-point
    affine coefficients (a0, a1, a2, a3, a4, a5): source x = (a2 + X·a0 + Y·a1) >> 16, y = (a5 +
    X·a3 + Y·a4) >> 16 for output pixel (X, Y) (PIL ``affine_fixed``)."""
    cx, cy = width / 2, height / 2
    a = -math.radians(angle)
    m = [round(math.cos(a), 15), round(math.sin(a), 15), 0.0,
         round(-math.sin(a), 15), round(math.cos(a), 15), 0.0]
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    return (fix(m[0]), fix(m[1]), fix(m[2] + m[0] * 0.5 + m[1] * 0.5),
            fix(m[3]), fix(m[4]), fix(m[5] + m[3] * 0.5 + m[4] * 0.5))


def gridmask_keep(
    d: Tensor, length: Tensor, st_h: Tensor, st_w: Tensor, angle: Tensor, mode: int,
    height: int, width: int, device: torch.device,
) -> Tensor:
    """bool (B, H, W) on ``device``: True where GridMask keeps the pixel — exactly the authors'
    ``Grid.__call__`` per sample: on a ⌊1.5H⌋ × ⌊1.5W⌋ canvas of ones, rows and columns with
    (i - st) mod d < l set to 0, the canvas rotated by PIL ``rotate(angle)`` (nearest, fill 0; its
    exact 0/90/180/270 shortcuts), the centre H × W cropped; ``mode`` 1 inverts. Inputs (B,)
    int64 (CPU)."""
    hh, ww = int(1.5 * height), int(1.5 * width)
    oy, ox = (hh - height) // 2, (ww - width) // 2
    b = d.shape[0]
    ang = torch.remainder(angle, 360)
    coef = torch.tensor([_pil_rotation_fixed(int(a), ww, hh) for a in ang.tolist()],
                        dtype=torch.long).view(b, 6, 1, 1).to(device)
    ys = (torch.arange(height, device=device) + oy).view(1, height, 1)
    xs = (torch.arange(width, device=device) + ox).view(1, 1, width)
    a0, a1, a2, a3, a4, a5 = coef.unbind(1)
    src_x = (a2 + xs * a0 + ys * a1) >> 16
    src_y = (a5 + xs * a3 + ys * a4) >> 16
    # PIL's transpose shortcuts for 0, 180 and (square canvas) 90 / 270 degrees
    a = ang.to(device).view(b, 1, 1)
    zero = torch.zeros_like(src_x)
    xs_b, ys_b = xs + zero, ys + zero
    shortcut = [(a == 0, xs_b, ys_b), (a == 180, ww - 1 - xs_b, hh - 1 - ys_b)]
    if ww == hh:
        shortcut += [(a == 90, hh - 1 - ys_b, xs_b), (a == 270, ys_b, ww - 1 - xs_b)]
    for cond, sx, sy in shortcut:
        src_x = torch.where(cond, sx, src_x)
        src_y = torch.where(cond, sy, src_y)
    inside = (src_x >= 0) & (src_x < ww) & (src_y >= 0) & (src_y < hh)
    dv, lv = d.to(device).view(b, 1, 1), length.to(device).view(b, 1, 1)
    band_y = torch.remainder(src_y - st_h.to(device).view(b, 1, 1), dv) < lv
    band_x = torch.remainder(src_x - st_w.to(device).view(b, 1, 1), dv) < lv
    canvas = inside & ~band_y & ~band_x
    return ~canvas if mode == 1 else canvas


@AUGMENTATIONS.register("gridmask")
class GridMask(_DatasetStats, Augmentation):
    """GridMask (Chen et al. 2020) as the authors' code (``imagenet_grid/utils/grid.py``), per
    sample.

    Unit size d ~ U{d1, …, d2 - 1} with (d1, d2) = round(``d``·min(H, W)) (default (96/224, 1):
    the authors' ImageNet d1 = 96, d2 = 224 at 224 px); l = int(d·``ratio`` + 0.5); offsets
    st_h, st_w ~ U{0, …, d - 1}; rotation ~ U{0, …, ``rotate`` - 1} degrees; mask from
    :func:`gridmask_keep`. ``mode`` 1 (authors' ImageNet setting, "GridMask") drops the
    (d - l)² squares; 0 ("revised") keeps them and drops the bands. Dropped pixels get the dataset
    mean (the reference multiplies normalised images by the mask: 0 = mean), which needs
    ``set_dataset_stats``. Defaults: the authors' ImageNet run (ratio 0.6, rotate 360, mode 1,
    p 0.8; they ramp p up over training, we keep it fixed). Log: ``d``, ``l``, ``st_h``,
    ``st_w``, ``angle`` (int64), ``lam`` = kept fraction, ``applied``.
    """

    name = "gridmask"

    def __init__(
        self,
        d: tuple[float, float] = (96 / 224, 1.0),
        ratio: float = 0.6,
        rotate: int = 360,
        mode: int = 1,
        p: float = 0.8,
    ) -> None:
        super().__init__(p)
        self.d = as_range("d", d, 0.0, 1.0)
        self.ratio = as_float("ratio", ratio, 0.0, 1.0)
        self.rotate = as_int("rotate", rotate, 1)
        if mode not in (0, 1) or isinstance(mode, bool):
            raise ParameterError("mode", f"mode must be 0 or 1, got {mode!r}")
        self.mode = int(mode)

    def unit_range(self, height: int, width: int) -> tuple[int, int]:
        """(d1, d2) in pixels: d ~ U{d1, …, d2 - 1}."""
        s = min(height, width)
        d1, d2 = max(round(self.d[0] * s), 1), round(self.d[1] * s)
        if d2 <= d1:
            raise ValueError(
                f"gridmask: d={self.d} gives an empty unit range [{d1}, {d2}) at {height}x{width}"
            )
        return d1, d2

    def draw(self, b: int, height: int, width: int, generator: torch.Generator) -> AugLog:
        """Per-sample d, l, st_h, st_w, angle (int64 (B,)), drawn in this order (after the mask)."""
        d1, d2 = self.unit_range(height, width)
        d = torch.randint(d1, d2, (b,), generator=generator)
        length = torch.floor(d.double() * self.ratio + 0.5).long()
        st_h = torch.floor(uniform(b, 0, 1, generator) * d).long()
        st_w = torch.floor(uniform(b, 0, 1, generator) * d).long()
        angle = torch.randint(0, self.rotate, (b,), generator=generator)
        return {"d": d, "l": length, "st_h": st_h, "st_w": st_w, "angle": angle}

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask, prm = self.draw_masked(images, generator)
        log: AugLog = {k: torch.where(mask, v, 0) for k, v in prm.items()}
        if not bool(mask.any()):
            return images, targets, {**log, "lam": torch.ones(b), "applied": mask}
        keep = gridmask_keep(prm["d"], prm["l"], prm["st_h"], prm["st_w"], prm["angle"],
                             self.mode, h, w, images.device)
        keep = keep | ~mask.to(images.device).view(b, 1, 1)
        lam = keep.flatten(1).double().mean(1).float().cpu()
        out = torch.where(keep.unsqueeze(1), images, self.stats(images)[0])
        return out, targets, {**log, "lam": lam, "applied": mask}
