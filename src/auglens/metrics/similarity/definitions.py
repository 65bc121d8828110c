"""The metric registry and the map-vs-map metric bodies: MAD, MSD, Pearson, Spearman,
Overlap@Y / IoU@Y and SSIM (each ``fn(MapContext) -> (N,) float64``), and name resolution.

The mass-distribution metrics (centre-of-mass shift, EMD, Class-KLD) are in :mod:`.distributions`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AuglensError
from ...registry import Registry
from .context import MapContext
from .ranking import _format_y, _spearman_cpu, _twice_centred_tie_positions, top_count

#: Study A's map metrics; ``overlap`` expands to ``overlap@Y`` for each Y in ``ys``.
DEFAULT_METRICS: tuple[str, ...] = ("mad", "msd", "pearson", "spearman", "overlap")

#: Metric families expanded over ``ys`` by :func:`resolve_metrics`.
_FAMILIES = ("overlap", "iou")

MetricFn = Callable[["MapContext"], Tensor]

#: name -> function(MapContext) -> (N,) float64. Names give CLI choices; unknown names list them.
METRICS: Registry[MetricFn] = Registry("metric")

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5): skimage's truncate=3.5 → 11 taps
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_CHUNK = 1024


def _pearson_normalised(x: Tensor, y: Tensor, undefined: Tensor) -> Tensor:
    """Pearson r per row of min-max normalised float64 (N, n) ``x``, ``y``; NaN where ``undefined``.

    Uses raw moments (no centred copies). That is well conditioned here: a non-constant normalised
    row holds both 0 and 1, so n·var ≥ 1/2 while Σx² ≤ n, and the rounding error of r stays below
    ≈ 2n·2⁻⁵³ (≈ 2e-13 at n = 1024).
    """
    n = x.shape[1]
    sx, sy = x.sum(1), y.sum(1)
    cov = _rowdot(x, y) - sx * sy / n
    vx = _rowdot(x, x) - sx * sx / n
    vy = _rowdot(y, y) - sy * sy / n
    r = (cov / (vx * vy).sqrt_()).clamp_(-1.0, 1.0)
    return r.masked_fill_(undefined, math.nan)


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise dot product of (N, n) tensors as (N,)."""
    return torch.linalg.vecdot(x, y, dim=1)


def _centred_corr(xc: Tensor, yc: Tensor, undefined: Tensor) -> Tensor:
    num = _rowdot(xc, yc)
    den = (_rowdot(xc, xc) * _rowdot(yc, yc)).sqrt_()
    r = (num / den).clamp_(-1.0, 1.0)
    return r.masked_fill_(undefined, math.nan)


@METRICS.register("mad")
def _metric_mad(ctx: MapContext) -> Tensor:
    """Mean absolute difference of the min-max normalised maps, in [0, 1]."""
    return torch.linalg.vector_norm(ctx.norm_diff, ord=1, dim=1) / ctx.n_pixels


@METRICS.register("msd")
def _metric_msd(ctx: MapContext) -> Tensor:
    """Mean squared difference of the min-max normalised maps, in [0, 1]."""
    d = ctx.norm_diff
    return _rowdot(d, d) / ctx.n_pixels


@METRICS.register("pearson")
def _metric_pearson(ctx: MapContext) -> Tensor:
    """Pearson r of the flattened maps; NaN where either map is constant."""
    return _pearson_normalised(ctx.norm_a, ctx.norm_b, ctx.constant)


@METRICS.register("spearman")
def _metric_spearman(ctx: MapContext) -> Tensor:
    """Spearman rho (average ranks for ties); NaN where either map is constant."""
    if ctx.n_pairs == 0:
        return torch.zeros(0, dtype=torch.float64, device=ctx.device)
    if ctx.device.type == "cpu" and ctx.n_pixels > 1:
        rho = _spearman_cpu(ctx.sorted_a[0], ctx.sorted_b[0], ctx.b_pos_of_a)
        return rho.masked_fill_(ctx.constant, math.nan)
    # ρ is scale-invariant: correlate the doubled (integer-valued) centred average ranks
    ra = _twice_centred_tie_positions(ctx.sorted_a[0])  # in a's order
    rb = _twice_centred_tie_positions(ctx.sorted_b[0])  # in b's order
    rb_at_a = rb.gather(1, ctx.b_pos_of_a)  # b's centred rank of a's j-th pixel
    return _centred_corr(ra, rb_at_a, ctx.constant)


def _overlap_metric(y: float | Fraction) -> MetricFn:
    def fn(ctx: MapContext) -> Tensor:
        k = top_count(ctx.n_pixels, y)
        return ctx.intersection(k).to(torch.float64) / k

    fn.__doc__ = f"Overlap rate |T(a) ∩ T(b)| / |T(a)| of the top {_format_y(y)}% pixel sets."
    return fn


def _iou_metric(y: float | Fraction) -> MetricFn:
    def fn(ctx: MapContext) -> Tensor:
        k = top_count(ctx.n_pixels, y)
        inter = ctx.intersection(k).to(torch.float64)
        return inter / (2 * k - inter)

    fn.__doc__ = f"IoU |T(a) ∩ T(b)| / |T(a) ∪ T(b)| of the top {_format_y(y)}% pixel sets."
    return fn


for _y in (5, 10, 20):
    METRICS.register(f"overlap@{_y}")(_overlap_metric(_y))
    METRICS.register(f"iou@{_y}")(_iou_metric(_y))


def _need_spatial(ctx: MapContext, name: str) -> tuple[int, int]:
    if ctx.spatial is None:
        raise AuglensError(f"metric '{name}' needs 2-D maps (N, h, w), got flattened (N, n) maps")
    return ctx.spatial


def _gaussian_taps() -> Tensor:
    x = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / _SSIM_SIGMA) ** 2)
    return g / g.sum()


def _reflect_index(n: int, r: int, device: torch.device) -> Tensor:
    """Indices extending an axis of length n by r on each side, scipy 'reflect' mode (cba|abc)."""
    i = torch.arange(-r, n + r, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def ssim_window(h: int, w: int) -> int:
    """SSIM crop window: 11, clipped to the largest odd number ≤ min(h, w) for small maps."""
    s = min(h, w, 2 * _SSIM_RADIUS + 1)
    return s if s % 2 else s - 1


@METRICS.register("ssim")
def _metric_ssim(ctx: MapContext) -> Tensor:
    """Mean SSIM of the min-max normalised maps (Gaussian σ=1.5, 11 taps, data_range=1)."""
    h, w = _need_spatial(ctx, "ssim")
    out = torch.empty(ctx.n_pairs, dtype=torch.float64, device=ctx.device)
    g = _gaussian_taps().to(ctx.device)
    ri, ci = (
        _reflect_index(h, _SSIM_RADIUS, ctx.device),
        _reflect_index(w, _SSIM_RADIUS, ctx.device),
    )
    p = (ssim_window(h, w) - 1) // 2
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data_range = 1
    for s in range(0, ctx.n_pairs, _SSIM_CHUNK):
        x = ctx.norm_a[s : s + _SSIM_CHUNK].view(-1, h, w)
        y = ctx.norm_b[s : s + _SSIM_CHUNK].view(-1, h, w)
        m = x.shape[0]
        z = torch.stack([x, y, x * x, y * y, x * y], 1)[:, :, ri][:, :, :, ci]
        z = z.reshape(m * 5, 1, h + 2 * _SSIM_RADIUS, w + 2 * _SSIM_RADIUS)
        z = F.conv2d(F.conv2d(z, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))
        ux, uy, uxx, uyy, uxy = z.view(m, 5, h, w).unbind(1)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        num = (2 * ux * uy + c1) * (2 * vxy + c2)
        den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        out[s : s + m] = (num / den)[:, p : h - p, p : w - p].mean((1, 2))
    return out


def resolve_metrics(
    metrics: str | Iterable[str] = DEFAULT_METRICS, ys: Sequence[float] = (5, 10, 20)
) -> list[tuple[str, MetricFn]]:
    """Names → (output name, function). 'overlap'/'iou' expand to 'overlap@Y' for Y in ``ys``;
    'overlap@Y'/'iou@Y' accept any 0 < Y ≤ 100; other names must be registered in :data:`METRICS`.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    out: dict[str, MetricFn] = {}
    for name in metrics:
        if name in _FAMILIES:
            for y in ys:
                top_count(1, y)
                out.setdefault(
                    f"{name}@{_format_y(y)}",
                    (_overlap_metric if name == "overlap" else _iou_metric)(y),
                )
            continue
        if name in METRICS:
            out.setdefault(name, METRICS.get(name))
            continue
        match = re.fullmatch(r"(overlap|iou)@(\d+(?:\.\d+)?)", name)
        if match:
            y = Fraction(match.group(2))
            top_count(1, y)
            key = f"{match.group(1)}@{_format_y(y)}"
            out.setdefault(
                key, (_overlap_metric if match.group(1) == "overlap" else _iou_metric)(y)
            )
            continue
        METRICS.get(name)  # raises AuglensError listing the valid names
    return list(out.items())
