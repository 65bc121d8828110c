"""The image operations of the automated augmentation policies, batched with a per-sample
operation and magnitude (used by ``policies``: RandAugment, TrivialAugmentWide, AutoAugment,
AugMix).

Every operation equals torchvision v2's kernel for **float** images in [0, 1] (the dispatch of
``torchvision.transforms.v2._auto_augment._AutoAugmentBase._apply_image_or_video_transform``):
shears about the top-left corner with angle atan(magnitude), translations by ``int(magnitude)``
pixels, rotations about the centre (positive = counter-clockwise, ``F.rotate``), all through
``grid_sample`` with zero fill and the same inverse matrix and grid as ``F.affine``; brightness,
colour (saturation), contrast and sharpness with factor 1 + magnitude; posterize to
``int(magnitude)`` bits (float kernel: ⌊x·2^b⌋ / 2^b, so 8 bits is *not* the identity on float
images); solarize inverts pixels >= magnitude (threshold 1.0 inverts exact white); autocontrast,
equalize (via uint8, as torchvision), invert. On uint8 images torchvision additionally rounds after
every operation; we keep float.

Magnitude tables (:data:`SPACES`) are torchvision's ``_AUGMENTATION_SPACE`` of each policy,
computed with the same float32 ``torch.linspace`` calls so that the values are bit-identical.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from .photometric import _blend, _grayscale

#: Global operation ids (logged as ``op``); index into this tuple.
OPS: tuple[str, ...] = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert",
)
OP_ID = {name: i for i, name in enumerate(OPS)}
IDENTITY = 0
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")

MagnitudeFn = Callable[[int, int, int], Tensor | None]


def _lin(hi: float) -> MagnitudeFn:
    return lambda n, h, w: torch.linspace(0.0, hi, n)


def _none(n: int, h: int, w: int) -> None:
    return None


def _posterize(top: int, span: int) -> MagnitudeFn:
    return lambda n, h, w: (top - (torch.arange(n) / ((n - 1) / span))).round().int()


def _solarize(n: int, h: int, w: int) -> Tensor:
    return torch.linspace(1.0, 0.0, n)


# (magnitudes(num_bins, height, width), signed) per operation, in torchvision's dict order (the
# order matters only for which local index means which op; ids are global, see OPS).
_RAND = {
    "Identity": (_none, False),
    "ShearX": (_lin(0.3), True),
    "ShearY": (_lin(0.3), True),
    "TranslateX": (lambda n, h, w: torch.linspace(0.0, 150.0 / 331.0 * w, n), True),
    "TranslateY": (lambda n, h, w: torch.linspace(0.0, 150.0 / 331.0 * h, n), True),
    "Rotate": (_lin(30.0), True),
    "Brightness": (_lin(0.9), True),
    "Color": (_lin(0.9), True),
    "Contrast": (_lin(0.9), True),
    "Sharpness": (_lin(0.9), True),
    "Posterize": (_posterize(8, 4), False),
    "Solarize": (_solarize, False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
_AUTO = {**{k: v for k, v in _RAND.items() if k != "Identity"}, "Invert": (_none, False)}
_WIDE = {
    "Identity": (_none, False),
    "ShearX": (_lin(0.99), True),
    "ShearY": (_lin(0.99), True),
    "TranslateX": (_lin(32.0), True),
    "TranslateY": (_lin(32.0), True),
    "Rotate": (_lin(135.0), True),
    "Brightness": (_lin(0.99), True),
    "Color": (_lin(0.99), True),
    "Contrast": (_lin(0.99), True),
    "Sharpness": (_lin(0.99), True),
    "Posterize": (_posterize(8, 6), False),
    "Solarize": (_solarize, False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
_AUGMIX_PARTIAL = {
    "ShearX": (_lin(0.3), True),
    "ShearY": (_lin(0.3), True),
    "TranslateX": (lambda n, h, w: torch.linspace(0.0, w / 3.0, n), True),
    "TranslateY": (lambda n, h, w: torch.linspace(0.0, h / 3.0, n), True),
    "Rotate": (_lin(30.0), True),
    "Posterize": (_posterize(4, 4), False),
    "Solarize": (_solarize, False),
    "AutoContrast": (_none, False),
    "Equalize": (_none, False),
}
_AUGMIX_ALL = {
    **_AUGMIX_PARTIAL,
    "Brightness": (_lin(0.9), True),
    "Color": (_lin(0.9), True),
    "Contrast": (_lin(0.9), True),
    "Sharpness": (_lin(0.9), True),
}


@dataclass(frozen=True)
class OpSpace:
    """The operations a policy chooses from and their magnitude bins (torchvision's
    ``_AUGMENTATION_SPACE``)."""

    name: str
    table: dict[str, tuple[MagnitudeFn, bool]]

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(self.table)

    def magnitudes(self, num_bins: int, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """(global op id (n_ops,) int64, magnitudes (n_ops, num_bins) float64 — 0 for operations
        without a magnitude — and signed (n_ops,) bool); cached, do not modify."""
        return _magnitude_tables(self.name, num_bins, height, width)

    def build_tables(
        self, num_bins: int, height: int, width: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        ids, rows, signed = [], [], []
        for op, (fn, sgn) in self.table.items():
            m = fn(num_bins, height, width)
            ids.append(OP_ID[op])
            rows.append(torch.zeros(num_bins, dtype=torch.float64) if m is None else m.double())
            signed.append(sgn)
        return torch.tensor(ids), torch.stack(rows), torch.tensor(signed)

    def draw(
        self, local_op: Tensor, bins: Tensor, sign_u: Tensor, num_bins: int, height: int,
        width: int,
    ) -> tuple[Tensor, Tensor]:
        """Global op ids and signed magnitudes (float64) for local op indices ``local_op``,
        magnitude bins ``bins`` and sign draws ``sign_u`` ~ U[0, 1) (all the same shape, CPU):
        negative where the op is signed and ``sign_u <= 0.5`` (torchvision's test)."""
        ids, table, signed = self.magnitudes(num_bins, height, width)
        mag = table[local_op, bins]
        mag = torch.where(signed[local_op] & (sign_u <= 0.5), -mag, mag)
        return ids[local_op], mag


@functools.lru_cache(maxsize=256)
def _magnitude_tables(
    space: str, num_bins: int, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor]:
    return SPACES[space].build_tables(num_bins, height, width)


SPACES = {
    "randaugment": OpSpace("randaugment", _RAND),
    "autoaugment": OpSpace("autoaugment", _AUTO),
    "trivialaugment": OpSpace("trivialaugment", _WIDE),
    "augmix": OpSpace("augmix", _AUGMIX_ALL),
    "augmix_partial": OpSpace("augmix_partial", _AUGMIX_PARTIAL),
}


# ---------------------------------------------------------------- geometric


def inverse_affine(
    center: tuple[float, float], angle: float, translate: tuple[float, float],
    shear: tuple[float, float],
) -> tuple[float, ...]:
    """torchvision ``_get_inverse_affine_matrix(center, angle, translate, scale=1, shear)`` (6
    floats; degrees; centre and translation in pixels, the centre relative to the image centre),
    with the same Python float arithmetic."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return tuple(m)


@functools.lru_cache(maxsize=8192)
def geometric_matrix(op: int, magnitude: float, height: int, width: int) -> tuple[float, ...]:
    """Inverse matrix of geometric op id ``op`` with ``magnitude``, built exactly as torchvision's
    AutoAugment dispatch does (``F.affine`` / ``F.rotate`` arguments)."""
    name = OPS[op]
    if name in ("ShearX", "ShearY"):  # center=[0, 0]: the top-left corner
        deg = math.degrees(math.atan(magnitude))
        shear = (deg, 0.0) if name == "ShearX" else (0.0, deg)
        return inverse_affine((-width * 0.5, -height * 0.5), 0.0, (0.0, 0.0), shear)
    if name in ("TranslateX", "TranslateY"):
        t = float(int(magnitude))
        return inverse_affine((0.0, 0.0), 0.0, (t, 0.0) if name == "TranslateX" else (0.0, t),
                              (0.0, 0.0))
    if name == "Rotate":  # F.rotate: angle % 360, then the matrix of -angle
        return inverse_affine((0.0, 0.0), -(magnitude % 360), (0.0, 0.0), (0.0, 0.0))
    raise ValueError(f"{name} is not a geometric operation")


@functools.lru_cache(maxsize=64)
def _base_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """torchvision ``_affine_grid``'s (1, H·W, 3) base grid (pixel centres about the centre)."""
    base = torch.empty(1, height, width, 3, dtype=dtype, device=device)
    base[..., 0].copy_(
        torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)
    )
    base[..., 1].copy_(
        torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)
        .unsqueeze_(-1)
    )
    base[..., 2].fill_(1)
    return base.view(1, height * width, 3)


def warp(images: Tensor, matrices: Tensor, interpolation: str) -> Tensor:
    """Warp (n, C, H, W) by inverse matrices (n, 2, 3) (pixel units about the image centre) like
    torchvision ``F.affine`` for float tensors: its ``_affine_grid`` (matrix cast to the image
    dtype, grid normalised after applying it), ``grid_sample`` with zero padding,
    ``align_corners=False``."""
    n, _, h, w = images.shape
    dt, dev = images.dtype, images.device
    theta = matrices.to(dtype=dt).to(dev)
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=dt, device=dev)
    rescaled = theta.transpose(1, 2).div(scale)
    # bmm like torchvision's (a single GEMM over all samples rounds some nearest-pixel ties
    # differently)
    grid = _base_grid(h, w, dt, dev).expand(n, h * w, 3).bmm(rescaled).view(n, h, w, 2)
    return F.grid_sample(images, grid, mode=interpolation, padding_mode="zeros",
                         align_corners=False)


# ---------------------------------------------------------------- photometric


def _factor(m: Tensor, x: Tensor) -> Tensor:
    return (1.0 + m).to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision ``adjust_sharpness`` per sample (factor (n, 1, 1, 1)): blend the interior with
    the 3×3 [[1,1,1],[1,5,1],[1,1,1]]/13 blur, borders unchanged; clamp to [0, 1]."""
    c, h, w = x.shape[-3:]
    if h <= 2 or w <= 2:
        return x
    inner = x[..., 1:-1, 1:-1]
    # (3x3 sum + 4·centre) / 13 (an average pool is much faster than a depthwise conv on CPU)
    blurred = (F.avg_pool2d(x, 3, stride=1) * 9.0 + 4.0 * inner) / 13.0
    out = x.clone()
    out[..., 1:-1, 1:-1] = torch.lerp(blurred, inner, factor)  # f·x + (1 - f)·blur
    return out.clamp_(0.0, 1.0)


def _photometric(name: str, x: Tensor, m: Tensor) -> Tensor:
    if name == "Brightness":
        return (x * _factor(m, x)).clamp_(0.0, 1.0)
    if name == "Color":
        return _blend(x, _grayscale(x), _factor(m, x))
    if name == "Contrast":
        mean = _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
        return _blend(x, mean, _factor(m, x))
    if name == "Sharpness":
        return sharpness(x, _factor(m, x))
    if name == "Posterize":
        levels = torch.pow(2.0, torch.trunc(m)).to(device=x.device, dtype=x.dtype)
        levels = levels.view(-1, 1, 1, 1)
        return torch.minimum(x.mul(levels).floor_(), levels - 1).clamp_min_(0).mul_(1.0 / levels)
    if name == "Solarize":
        thr = m.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        return torch.where(x >= thr, 1.0 - x, x)
    if name == "AutoContrast":
        return TF.autocontrast(x)
    if name == "Equalize":
        return TF.equalize(x)
    if name == "Invert":
        return 1.0 - x
    raise ValueError(f"unknown operation {name!r}")


# ---------------------------------------------------------------- dispatch

_IS_GEOMETRIC = torch.tensor([name in _GEOMETRIC for name in OPS])
_GEOMETRIC_KEY = OP_ID["ShearX"]  # all geometric samples form one group under this key


def apply_ops(
    images: Tensor, op: Tensor, magnitude: Tensor, interpolation: str, inplace: bool = False
) -> Tensor:
    """Apply per sample the global op ``op[i]`` (int64 (B,), CPU) with signed ``magnitude[i]``
    (float64 (B,), CPU) to ``images`` (B, 3, H, W) float in [0, 1]. The non-Identity samples are
    gathered once sorted by op, every op runs once on its contiguous slice — all geometric ops
    together in one ``grid_sample`` — and writes its results back into a copy of ``images`` or,
    if ``inplace``, into ``images`` itself. ``Identity`` samples stay
    bit-identical; if all are Identity, ``images`` is returned as is."""
    h, w = images.shape[-2:]
    active = op != IDENTITY
    if not bool(active.any()):
        return images
    key = torch.where(_IS_GEOMETRIC[op], _GEOMETRIC_KEY, op)
    idx = active.nonzero().squeeze(1)
    idx = idx[torch.argsort(key[idx], stable=True)]
    counts = torch.bincount(key[idx], minlength=len(OPS)).tolist()
    dev = images.device
    idx_dev = idx.to(dev)
    x_sorted = images.index_select(0, idx_dev)
    op_sorted, mag_sorted = op[idx], magnitude[idx]
    out = images if inplace else images.clone()
    start = 0
    for k, n in enumerate(counts):
        if n == 0:
            continue
        sl = slice(start, start + n)
        x = x_sorted[sl]
        if k == _GEOMETRIC_KEY:
            mats = [geometric_matrix(o, m, h, w)
                    for o, m in zip(op_sorted[sl].tolist(), mag_sorted[sl].tolist(), strict=True)]
            y = warp(x, torch.tensor(mats, dtype=x.dtype).view(n, 2, 3), interpolation)
        else:
            y = _photometric(OPS[k], x, mag_sorted[sl])
        out.index_copy_(0, idx_dev[sl], y)  # x_sorted holds the inputs: safe in place
        start += n
    return out


def op_names(ids: Tensor) -> list[str]:
    """Names of global op ids (for logs and error messages)."""
    return [OPS[int(i)] for i in ids.flatten()]
