"""Shared helpers: parameter validation, masked application, batched Gaussian smoothing."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ParameterError


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def as_float(field: str, v: Any, lo: float | None = None, hi: float | None = None) -> float:
    """``v`` as a finite float in ``[lo, hi]``; otherwise ``ParameterError(field)``."""
    if not _is_number(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ParameterError(field, f"{field} must be a number in {bounds}, got {v!r}")
    return float(v)


def as_int(field: str, v: Any, lo: int = 0, odd: bool = False) -> int:
    """``v`` as an int ``>= lo`` (odd if ``odd``); otherwise ``ParameterError(field)``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (odd and v % 2 == 0):
        kind = "an odd integer" if odd else "an integer"
        raise ParameterError(field, f"{field} must be {kind} >= {lo}, got {v!r}")
    return int(v)


def as_bool(field: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ParameterError(field, f"{field} must be true or false, got {v!r}")
    return v


def as_range(field: str, v: Any, lo: float, hi: float | None = None) -> tuple[float, float]:
    """``v`` as ``(a, b)`` with ``lo <= a <= b <= hi``; otherwise ``ParameterError(field)``."""
    ok = (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) == 2
        and all(_is_number(x) for x in v)
        and lo <= v[0] <= v[1]
        and (hi is None or v[1] <= hi)
    )
    if not ok:
        raise ParameterError(
            field, f"{field} must be a pair (min, max) with {lo} <= min <= max"
            + ("" if hi is None else f" <= {hi}") + f", got {v!r}"
        )
    return (float(v[0]), float(v[1]))


def jitter_range(
    field: str, v: Any, center: float, bound: float, clip_first_to_zero: bool = True
) -> tuple[float, float]:
    """torchvision ``ColorJitter._check_input``: a number ``x`` -> ``[center-x, center+x]``
    (first end clipped at 0 if ``clip_first_to_zero``), or an explicit ``(min, max)``."""
    if _is_number(v):
        if v < 0:
            raise ParameterError(field, f"{field} must be non-negative, got {v!r}")
        r = (center - float(v), center + float(v))
        if clip_first_to_zero:
            r = (max(r[0], 0.0), r[1])
        if not -bound <= r[0] <= r[1] <= bound:
            raise ParameterError(field, f"{field} range {r} must lie in [{-bound}, {bound}]")
        return r
    if isinstance(v, Sequence) and not isinstance(v, str):
        return as_range(field, v, -bound if not clip_first_to_zero else 0.0, bound)
    raise ParameterError(field, f"{field} must be a number or a pair (min, max), got {v!r}")


def uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> Tensor:
    """float64 (n,) on CPU, U[lo, hi) from ``generator``."""
    return torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo


def apply_masked(
    images: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Return ``images`` with ``fn(images[idx], idx)`` written at the samples where ``mask`` (CPU
    bool (B,)) is True; ``idx`` is the CPU int64 index of those samples. Other samples are returned
    bit-identical, and ``fn`` is not called at all if no sample is selected."""
    if not bool(mask.any()):
        return images
    if bool(mask.all()):
        return fn(images, torch.arange(images.shape[0]))
    idx = mask.nonzero().squeeze(1)
    idx_dev = idx.to(images.device)
    out = images.clone()
    out[idx_dev] = fn(images.index_select(0, idx_dev), idx)
    return out


def gaussian_kernels(kernel_size: int, sigma: Tensor) -> Tensor:
    """(S, kernel_size) normalised 1-D Gaussian kernels for sigmas (S,), torchvision's formula
    (``_get_gaussian_kernel1d``: weights exp(-i²/(2σ²)) at integer offsets i, summing to 1)."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=sigma.dtype, device=sigma.device)
    return torch.softmax(x.div(sigma[:, None]).pow(2).neg(), dim=-1)


def separable_blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Blur (B, C, H, W) with per-sample separable kernels (B, k) (same kernel along x and y),
    reflect padding of k // 2 as torchvision's ``gaussian_blur``; one grouped conv per axis."""
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    r = k // 2
    if r >= h or r >= w:
        raise ValueError(f"kernel size {k} too large for reflect padding of a {h}x{w} image")
    weight = kernels.to(x.dtype).repeat_interleave(c, dim=0)  # (B*C, k)
    y = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    y = F.conv2d(y, weight.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(y, weight.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)


def area_aspect_draws(
    b: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    generator: torch.Generator, attempts: int = 10,
) -> tuple[Tensor, Tensor]:
    """torchvision's box draws (``RandomResizedCrop`` / ``RandomErasing``): target area
    H·W·U(scale), then aspect exp(U(log ratio)), each float64 (B, attempts), in that order."""
    target = height * width * uniform(b * attempts, *scale, generator).view(b, attempts)
    log_r = uniform(b * attempts, math.log(ratio[0]), math.log(ratio[1]), generator)
    return target, torch.exp(log_r).view(b, attempts)


def place_uniform(
    height: int, width: int, h: Tensor, w: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(top, left) float64 (B,) of boxes ``h`` × ``w`` placed uniformly on the integer grid:
    top = ⌊U·(H − h + 1)⌋ (then left), clamped to H − h."""
    b = h.shape[0]
    u_top, u_left = uniform(b, 0, 1, generator), uniform(b, 0, 1, generator)
    top = torch.floor(u_top * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u_left * (width - w + 1)).clamp(max=width - w)
    return top, left
