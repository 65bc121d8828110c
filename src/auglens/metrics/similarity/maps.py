"""Input validation and min-max normalisation of map batches (conventions: the package docstring).

A batch of pairs is validated once (:func:`_validate_maps`): shapes, devices, a sortable dtype
and per-map float64 minima/maxima, which also find NaN/inf and constant maps and serve min-max
normalisation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ...errors import AuglensError


def _check_finite(x: Tensor, name: str) -> str | None:
    """Message naming how many maps (rows) of ``x`` contain NaN/inf, or None if all are finite."""
    if not x.is_floating_point():
        return None
    bad = ~torch.isfinite(x).reshape(x.shape[0], -1).all(1)
    count = int(bad.sum())
    if count == 0:
        return None
    first = int(bad.nonzero()[0, 0])
    return f"{name}: {count} of {x.shape[0]} maps contain NaN or inf (first at index {first})"


def _as_tensor(x: object, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.is_complex():
        raise AuglensError(f"{name} must be real-valued, got {t.dtype}")
    if t.dtype == torch.bool:
        t = t.to(torch.float32)
    return t


class _Maps(NamedTuple):
    """A validated batch: maps flattened to (N, n) in a sortable dtype, (h, w) or None, and the
    per-map float64 (N,) minima and maxima (computed once; they serve validation and min-max)."""

    a: Tensor
    b: Tensor
    spatial: tuple[int, int] | None
    lo_a: Tensor
    hi_a: Tensor
    lo_b: Tensor
    hi_b: Tensor

    def rows(self, start: int, stop: int) -> _Maps:
        sl = slice(start, stop)
        return _Maps(
            self.a[sl], self.b[sl], self.spatial,
            self.lo_a[sl], self.hi_a[sl], self.lo_b[sl], self.hi_b[sl],
        )  # fmt: skip


def _sortable(x: Tensor) -> Tensor:
    """``x`` in a dtype the sort handles fast; the conversion is exact (order and ties kept)."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x.double()


def _row_range(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row float64 (min, max) of (N, n) ``x``; NaN/inf in a row show up in them."""
    if x.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=x.device)
        return empty, empty
    lo, hi = torch.aminmax(x, dim=1)
    return lo.to(torch.float64), hi.to(torch.float64)


def _nonfinite_message(lo: Tensor, hi: Tensor, name: str) -> str | None:
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    count = int(bad.sum())
    if count == 0:
        return None
    first = int(bad.nonzero()[0, 0])
    return f"{name}: {count} of {lo.shape[0]} maps contain NaN or inf (first at index {first})"


def _validate_maps(a: object, b: object) -> _Maps:
    """Check a pair of map batches (same shape (N, h, w) or (N, n), same device, finite)."""
    a, b = _as_tensor(a, "map a"), _as_tensor(b, "map b")
    if a.shape != b.shape:
        raise AuglensError(
            f"map shapes differ: a {tuple(a.shape)} vs b (baseline) {tuple(b.shape)}; "
            "both must be (N, h, w) or (N, n)"
        )
    if a.ndim not in (2, 3):
        raise AuglensError(
            f"maps must be batches of shape (N, h, w) or (N, n), got {tuple(a.shape)}"
        )
    if a.device != b.device:
        raise AuglensError(f"maps are on different devices: a {a.device} vs b {b.device}")
    n = math.prod(a.shape[1:])
    if n == 0:
        raise AuglensError(f"maps have no pixels: shape {tuple(a.shape)}")
    spatial = (int(a.shape[1]), int(a.shape[2])) if a.ndim == 3 else None
    fa = _sortable(a.detach().reshape(a.shape[0], n))
    fb = _sortable(b.detach().reshape(b.shape[0], n))
    lo_a, hi_a = _row_range(fa)
    lo_b, hi_b = _row_range(fb)
    problems = [
        m
        for m in (
            _nonfinite_message(lo_a, hi_a, "a"),
            _nonfinite_message(lo_b, hi_b, "b (baseline)"),
        )
        if m
    ]
    if problems:
        raise AuglensError("maps contain NaN/inf: " + "; ".join(problems))
    return _Maps(fa, fb, spatial, lo_a, hi_a, lo_b, hi_b)


def minmax_normalize(m: Tensor) -> Tensor:
    """Min-max normalise each map of a batch to [0, 1]: (m − min m) / (max m − min m), per map.

    ``m``: (N, h, w) or (N, n), finite. Returns float64 of the same shape. A constant map
    (max = min) normalises to all zeros (the convention: "no pixel stands out").
    """
    m = _as_tensor(m, "map")
    if m.ndim < 2:
        raise AuglensError(f"maps must be a batch (N, h, w) or (N, n), got {tuple(m.shape)}")
    flat = _sortable(m.reshape(m.shape[0], -1))
    lo, hi = _row_range(flat)
    msg = _nonfinite_message(lo, hi, "map")
    if msg:
        raise AuglensError("maps contain NaN/inf: " + msg)
    return _minmax_rows(flat, lo, hi).reshape(m.shape)


def _minmax_rows(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(N, n) rows with float64 (N,) minima/maxima → float64 rows in [0, 1]; constant rows → 0."""
    rng = hi - lo
    rng = torch.where(rng == 0, torch.ones_like(rng), rng)
    return torch.sub(x, lo[:, None]).div_(rng[:, None])  # float64 by type promotion


def _check_nonnegative(maps: _Maps, name: str) -> None:
    """Raise, with counts, if any map of the batch has a negative value (per-map minima)."""
    for label, lo in (("a", maps.lo_a), ("b (baseline)", maps.lo_b)):
        bad = int((lo < 0).sum())
        if bad:
            raise AuglensError(
                f"metric '{name}' needs non-negative maps (mass distributions); {label}: {bad} of "
                f"{lo.shape[0]} maps have negative values (apply ReLU or shift them first)"
            )
