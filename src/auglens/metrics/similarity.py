"""Per-image comparison of two attribution maps (SPEC §3, Study A): ``b`` = baseline, ``a`` = other.

Every map metric takes a batch of pairs, maps of shape (N, h, w) or flattened (N, n) (n = h·w,
row-major), any real dtype, any device, and returns a float64 tensor of shape (N,) on the input
device: one value per image pair. Sums are accumulated in float64.

Conventions (binding for everything in this module):

- **Normalisation.** MAD, MSD and SSIM compare maps min-max normalised per map to [0, 1]
  (:func:`minmax_normalize`), because the raw scale of Grad-CAM differs between models. A
  constant map normalises to all zeros. Pearson and Spearman are invariant to it; centre-of-mass
  shift and EMD use the raw (non-negative) maps.
- **NaN policy.** Pearson and Spearman are NaN where either map is constant; centre-of-mass shift
  and EMD are NaN where either map sums to 0. NaNs stay in the output (never dropped); count them
  with :func:`count_nans` or :meth:`MapComparison.nan_counts`. Inputs with NaN/inf raise.
- **Top-Y sets.** T_Y(m) = the ⌈Y·n/100⌉ highest pixels of m (exact integer arithmetic, Y in
  percent), taken from a stable sort by value, descending: among equal values the lower flat
  pixel index ranks higher. Overlap = |T_Y(a) ∩ T_Y(b)| / |T_Y(a)|;
  IoU = |T_Y(a) ∩ T_Y(b)| / |T_Y(a) ∪ T_Y(b)|.
- **Spearman** ρ uses average ranks for ties (``scipy.stats.spearmanr``).
- **Class-KLD** = KL(p_b ‖ p_a) = Σ_k p_b,k (log p_b,k − log p_a,k) in nats, p = softmax(logits):
  the baseline's class distribution is the reference (:data:`CLASS_KLD_DIRECTION`).
- **SSIM** follows Wang et al. 2004 as in ``skimage.metrics.structural_similarity(x, y,
  data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, win_size=W)`` with
  W = 11, clipped for small maps to the largest odd number ≤ min(h, w) (the 11-tap Gaussian is kept,
  with 'reflect' padding; only the border crop shrinks).
- **EMD** is exact: the optimal-transport cost between the maps normalised to sum 1, ground
  distance Euclidean in pixels, solved per pair by POT's network simplex (``ot.emd2``) when the
  ``pot`` package is installed, else by ``scipy.optimize.linprog`` (HiGHS). It costs ≈1 ms per
  pair at 8×8 and ≈0.3 s at 32×32 (POT), so it is opt-in: not in :data:`DEFAULT_METRICS`.

Implementation: :func:`compare_maps` validates the batch once (per-map min/max, which also finds
NaN/inf and constant maps), then works block by block (≈ 131 K pixels per block on the CPU, run
with torch's intra-op threads at 1 and spread over a pool of ``workers`` threads, since many small
OpenMP regions stall badly on shared cores). Per block, one min-max normalisation serves
MAD/MSD/Pearson/SSIM and one stable descending sort per map serves Spearman's tie-aware ranks and
every top-Y set; the sort of float32 maps is numpy's SIMD sort of composite integer keys
(:func:`_sort_desc`). While a CPU batch runs, ``torch.get_num_threads()`` reads 1 (restored after).
"""

from __future__ import annotations

import ctypes
import functools
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from functools import cached_property
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AuglensError
from ..registry import Registry

__all__ = [
    "CLASS_KLD_DIRECTION",
    "DEFAULT_METRICS",
    "METRICS",
    "MapComparison",
    "MapContext",
    "average_ranks",
    "center_of_mass_shift",
    "class_kld",
    "compare_maps",
    "count_nans",
    "emd",
    "mad",
    "minmax_normalize",
    "msd",
    "overlap_rate",
    "pearson",
    "resolve_metrics",
    "spearman",
    "ssim",
    "ssim_window",
    "top_count",
    "topk_iou",
]

#: The direction of Class-KLD, recorded with every output that contains it.
CLASS_KLD_DIRECTION = "KL(p_baseline || p_other)"

#: Study A's map metrics; ``overlap`` expands to ``overlap@Y`` for each Y in ``ys``.
DEFAULT_METRICS: tuple[str, ...] = ("mad", "msd", "pearson", "spearman", "overlap")

#: Metric families expanded over ``ys`` by :func:`resolve_metrics`.
_FAMILIES = ("overlap", "iou")

MetricFn = Callable[["MapContext"], Tensor]

#: name -> function(MapContext) -> (N,) float64. Names give CLI choices; unknown names list them.
METRICS: Registry[MetricFn] = Registry("metric")

EmdBackend = Literal["auto", "pot", "linprog"]
LogitsKind = Literal["logits", "probs"]

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * 1.5 + 0.5): skimage's truncate=3.5 → 11 taps
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_CHUNK = 1024
# Pixels per block of pairs on the CPU: the float64 intermediates of a block (≈ 1 MiB each) stay
# in cache. Blocks run with torch's intra-op threads set to 1 and are spread over a pool of
# ``workers`` threads instead (torch and numpy release the GIL).
_BLOCK_PIXELS = 1 << 17
_BLOCK_PIXELS_ACCELERATOR = 1 << 24


# ----------------------------------------------------------------------------------- validation


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


# ------------------------------------------------------------------------------ building blocks


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


def top_count(n: int, y: float | Fraction) -> int:
    """|T_Y| = ⌈Y·n/100⌉ for Y in percent (0 < Y ≤ 100), in exact rational arithmetic.

    A float Y is read as the decimal it prints as (``0.1`` → 1/10), so ``top_count(1024, 5) == 52``
    with no float rounding.
    """
    if isinstance(y, bool):
        raise AuglensError(f"Y must be a percentage in (0, 100], got {y!r}")
    try:
        q = Fraction(str(y)) if isinstance(y, float) else Fraction(y)
    except (TypeError, ValueError):
        raise AuglensError(f"Y must be a percentage in (0, 100], got {y!r}") from None
    if not 0 < q <= 100:
        raise AuglensError(f"Y must be a percentage in (0, 100], got {y!r}")
    return -((-q.numerator * n) // (q.denominator * 100))


def _format_y(y: float | Fraction) -> str:
    q = Fraction(str(y)) if isinstance(y, float) else Fraction(y)
    return str(q.numerator) if q.denominator == 1 else format(float(q), "g")


_LOW32 = 0xFFFFFFFF


def _sort_desc(x: Tensor, nonnegative: bool = False) -> tuple[Tensor, Tensor]:
    """Sort each row of (N, n) ``x`` descending, stable (among equal values lower index first).

    Returns (keys, indices): ``indices`` int64 (N, n) is the order; ``keys`` (N, n) is sorted with
    ``keys[i, j] == keys[i, j+1]`` exactly when the two values are equal (ties).

    float32 maps on the CPU take a fast path: each value becomes an int64 composite key whose high
    32 bits are an order-reversing integer image of the float (−0.0 folded onto +0.0) and whose low
    32 bits are the pixel index; numpy's (SIMD) sort of these distinct keys gives exactly the stable
    descending order, several times faster than ``torch.sort(stable=True)``. Other dtypes/devices
    use ``torch.sort``. ``nonnegative``: the caller knows that no value is < 0 (−0.0 allowed).
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape[1] >= 2**31:
        return torch.sort(x, dim=1, descending=True, stable=True)
    if nonnegative:  # the bits of x ≥ 0 are already ordered; clearing the sign folds −0.0 on 0
        mono = x.view(torch.int32) & 0x7FFFFFFF
    else:
        bits = (x + 0.0).view(torch.int32)  # + 0.0 maps −0.0 to +0.0
        mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed-int order == float order
    comp = (~mono).to(torch.int64) << 32  # ~: descending; high word
    comp |= torch.arange(x.shape[1], dtype=torch.int64, device=x.device)
    comp.numpy().sort(axis=1)  # in place; keys are distinct, so any sort algorithm is stable here
    return comp >> 32, comp & _LOW32


def _twice_centred_tie_positions(sv: Tensor) -> Tensor:
    """Rows sorted along dim 1 → float64 (N, n): 2 · (mean position of the element's tie group
    − (n−1)/2), an exact integer.

    For an ascending sort this is 2 · (average rank − (n+1)/2) (``scipy.stats.rankdata``
    'average', centred and doubled); for a descending sort it is the negative of that. Sums of
    products of these are exact in float64 (|value| < 2n).
    """
    N, n = sv.shape
    dev = sv.device
    if n == 1 or N == 0:
        return torch.zeros(N, n, dtype=torch.float64, device=dev)
    if dev.type == "cpu":
        return torch.from_numpy(_twice_centred_tie_positions_np(sv.numpy()))
    return _twice_centred_tie_positions_torch(sv)


def _twice_centred_tie_positions_torch(sv: Tensor) -> Tensor:
    """Device-agnostic torch version of :func:`_twice_centred_tie_positions` (n ≥ 2)."""
    N, n = sv.shape
    dev = sv.device
    new = torch.ne(sv[:, 1:], sv[:, :-1])  # (N, n−1): element j+1 starts a new tie group
    if bool(new.all()):  # no ties anywhere: each element is its own group
        return (torch.arange(n, dtype=torch.float64, device=dev) * 2 - (n - 1)).expand(N, n)
    pos = torch.arange(n, device=dev)
    first = torch.zeros(N, n, dtype=torch.long, device=dev)
    torch.mul(new, pos[1:], out=first[:, 1:])
    first = first.cummax(1).values  # first position of each element's group
    last = torch.full((N, n), n - 1, dtype=torch.long, device=dev)
    torch.where(new, pos[:-1], last[:, :-1], out=last[:, :-1])
    last = last.flip(1).cummin(1).values.flip(1)  # last position of each element's group
    first += last
    return torch.sub(first, n - 1).to(torch.float64)


class _TieGroups(NamedTuple):
    """Run-length encoding of the tie groups of sorted rows (N, n), groups in flat order."""

    starts: np.ndarray  # (G,) flat index of each group's first element
    sizes: np.ndarray  # (G,) group lengths
    twice: np.ndarray  # (G,) float64: 2 · (mean position in the row − (n − 1)/2), an integer
    rows: np.ndarray  # (G,) row of each group


def _tie_groups_np(sv: np.ndarray) -> _TieGroups:
    """Tie groups of rows sorted along axis 1: one pass to find where the value changes."""
    N, n = sv.shape
    new = np.empty((N, n), dtype=bool)
    new[:, 0] = True  # every row starts a group
    np.not_equal(sv[:, 1:], sv[:, :-1], out=new[:, 1:])
    starts = np.flatnonzero(new)
    sizes = np.empty_like(starts)
    np.subtract(starts[1:], starts[:-1], out=sizes[:-1])
    sizes[-1] = N * n - starts[-1]
    rows = starts // n
    # 2 · (mean flat position − row·n − (n−1)/2) = 2·first + size − 1 − 2·row·n − (n − 1)
    twice = starts * 2 + sizes
    twice -= n
    twice -= rows * (2 * n)
    return _TieGroups(starts, sizes, twice.astype(np.float64), rows)


def _twice_centred_tie_positions_np(sv: np.ndarray) -> np.ndarray:
    """CPU version of :func:`_twice_centred_tie_positions`: each tie group's value repeated over
    its length (numpy: single-threaded, no per-op thread-pool overhead)."""
    g = _tie_groups_np(sv)
    return np.repeat(g.twice, g.sizes).reshape(sv.shape)


def _spearman_cpu(keys_a: Tensor, keys_b: Tensor, b_pos_of_a: Tensor) -> Tensor:
    """Σ-form Spearman on the CPU: ρ = Σ ra·rb / √(Σ ra² · Σ rb²) with doubled centred average
    ranks, where sums over a's tie groups replace expanding a's ranks (exact integer sums)."""
    N, n = keys_a.shape
    gb = _tie_groups_np(keys_b.numpy())
    rb = np.repeat(gb.twice, gb.sizes).reshape(N, n)  # b's ranks in b's order
    z = np.take_along_axis(rb, b_pos_of_a.numpy(), axis=1)  # b's rank of a's j-th pixel
    ga = _tie_groups_np(keys_a.numpy())
    seg = np.add.reduceat(z.reshape(-1), ga.starts)  # Σ of b's ranks over each group of a
    cross = np.bincount(ga.rows, weights=ga.twice * seg, minlength=N)
    ssa = np.bincount(ga.rows, weights=ga.sizes * ga.twice**2, minlength=N)
    ssb = np.bincount(gb.rows, weights=gb.sizes * gb.twice**2, minlength=N)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cross / np.sqrt(ssa * ssb)
    return torch.from_numpy(np.clip(rho, -1.0, 1.0))


def average_ranks(m: Tensor) -> Tensor:
    """1-based ranks of each map's pixels, ascending, ties get their average rank.

    ``m``: (N, h, w) or (N, n). Returns float64 (N, n), row i equal to
    ``scipy.stats.rankdata(m[i].ravel(), method="average")``.
    """
    m = _as_tensor(m, "map")
    flat = _sortable(m.reshape(m.shape[0], -1))
    sv, si = torch.sort(flat, dim=1)
    n = flat.shape[1]
    ranks = _twice_centred_tie_positions(sv).mul(0.5).add_((n + 1) / 2)
    return torch.empty_like(ranks).scatter_(1, si, ranks)


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


# ----------------------------------------------------------------------------- shared context


class MapContext:
    """One validated batch of map pairs plus lazily computed intermediates shared between metrics.

    ``a``: other model's maps, ``b``: baseline maps, (N, h, w) or (N, n). Each intermediate
    (min-max normalisation, one stable descending sort per map, positions in b's order) is computed
    at most once, whichever metrics ask for it. Optional ``a_logits``/``b_logits`` (N, K) feed
    ``class_kld``. Register a new metric as ``METRICS.register("name")(fn)``, ``fn(ctx) -> (N,)``.
    """

    def __init__(
        self,
        a: Tensor,
        b: Tensor,
        *,
        a_logits: Tensor | None = None,
        b_logits: Tensor | None = None,
        logits_kind: LogitsKind = "logits",
        emd_backend: EmdBackend = "auto",
    ) -> None:
        self._setup(_validate_maps(a, b), a_logits, b_logits, logits_kind, emd_backend)

    @classmethod
    def _checked(
        cls,
        maps: _Maps,
        a_logits: Tensor | None,
        b_logits: Tensor | None,
        logits_kind: LogitsKind,
        emd_backend: EmdBackend,
    ) -> MapContext:
        """A context on an already validated batch (no second pass over the data)."""
        self = cls.__new__(cls)
        self._setup(maps, a_logits, b_logits, logits_kind, emd_backend)
        return self

    def _setup(
        self,
        maps: _Maps,
        a_logits: Tensor | None,
        b_logits: Tensor | None,
        logits_kind: LogitsKind,
        emd_backend: EmdBackend,
    ) -> None:
        self.maps = maps
        self.a, self.b, self.spatial = maps.a, maps.b, maps.spatial
        self.n_pairs, self.n_pixels = self.a.shape
        self.device = self.a.device
        self.a_logits, self.b_logits = a_logits, b_logits
        self.logits_kind: LogitsKind = logits_kind
        self.emd_backend: EmdBackend = emd_backend

    # -- normalisation
    @cached_property
    def norm_a(self) -> Tensor:
        """float64 (N, n): ``a`` min-max normalised per map (constant map → zeros)."""
        return _minmax_rows(self.a, self.maps.lo_a, self.maps.hi_a)

    @cached_property
    def norm_b(self) -> Tensor:
        """float64 (N, n): ``b`` min-max normalised per map (constant map → zeros)."""
        return _minmax_rows(self.b, self.maps.lo_b, self.maps.hi_b)

    @cached_property
    def norm_diff(self) -> Tensor:
        """float64 (N, n): ``norm_a − norm_b``."""
        return self.norm_a - self.norm_b

    @cached_property
    def constant(self) -> Tensor:
        """bool (N,): either map of the pair is constant."""
        m = self.maps
        return (m.lo_a == m.hi_a) | (m.lo_b == m.hi_b)

    # -- one sort per map
    @cached_property
    def sorted_a(self) -> tuple[Tensor, Tensor]:
        """(tie keys, pixel indices) of ``a`` in descending order, ties → lower index first."""
        return _sort_desc(self.a, bool((self.maps.lo_a >= 0).all()))

    @cached_property
    def sorted_b(self) -> tuple[Tensor, Tensor]:
        """(tie keys, pixel indices) of ``b`` in descending order, ties → lower index first."""
        return _sort_desc(self.b, bool((self.maps.lo_b >= 0).all()))

    @cached_property
    def b_pos_of_a(self) -> Tensor:
        """int64 (N, n): entry j = position in b's order of the pixel at position j in a's order."""
        si_b = self.sorted_b[1]
        pos = torch.arange(self.n_pixels, device=self.device).expand_as(si_b)
        pos_b = torch.empty_like(si_b).scatter_(1, si_b, pos)  # pixel → position in b's order
        return pos_b.gather(1, self.sorted_a[1])

    def intersection(self, k: int) -> Tensor:
        """int64 (N,): |T(a) ∩ T(b)| for the top-``k`` sets."""
        if self.n_pairs == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return (self.b_pos_of_a[:, :k] < k).sum(1)

    # -- class distributions
    def logits(self) -> tuple[Tensor, Tensor]:
        if self.a_logits is None or self.b_logits is None:
            raise AuglensError(
                "metric 'class_kld' needs the class logits of both models: pass a_logits and "
                "b_logits (N, K)"
            )
        return self.a_logits, self.b_logits


# ------------------------------------------------------------------------------ metric bodies


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


def _check_nonnegative(maps: _Maps, name: str) -> None:
    """Raise, with counts, if any map of the batch has a negative value (per-map minima)."""
    for label, lo in (("a", maps.lo_a), ("b (baseline)", maps.lo_b)):
        bad = int((lo < 0).sum())
        if bad:
            raise AuglensError(
                f"metric '{name}' needs non-negative maps (mass distributions); {label}: {bad} of "
                f"{lo.shape[0]} maps have negative values (apply ReLU or shift them first)"
            )


def _pixel_coords(h: int, w: int) -> np.ndarray:
    """(h·w, 2) float64 (row, col) coordinates of the pixel centres, row-major."""
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], 1).astype(np.float64)


@METRICS.register("com_shift")
def _metric_com_shift(ctx: MapContext) -> Tensor:
    """Euclidean distance in pixels between the intensity centroids; NaN if a map sums to 0."""
    h, w = _need_spatial(ctx, "com_shift")
    _check_nonnegative(ctx.maps, "com_shift")
    rows = torch.arange(h, dtype=torch.float64, device=ctx.device)
    cols = torch.arange(w, dtype=torch.float64, device=ctx.device)

    def centroid(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = m.to(torch.float64).view(-1, h, w)
        mass = m.sum((1, 2))
        return (m.sum(2) @ rows) / mass, (m.sum(1) @ cols) / mass, mass

    ra, ca, ma = centroid(ctx.a)
    rb, cb, mb = centroid(ctx.b)
    d = torch.hypot(ra - rb, ca - cb)
    return d.masked_fill_((ma == 0) | (mb == 0), math.nan)


def _emd_pot(wa: np.ndarray, wb: np.ndarray, cost: np.ndarray) -> float:
    import ot

    val, log = ot.emd2(wa, wb, cost, numItermax=10_000_000, log=True)
    if log.get("result_code") != 1:
        raise AuglensError(f"EMD solver (POT) did not converge: {log.get('warning')}")
    return float(val)


def _emd_linprog(wa: np.ndarray, wb: np.ndarray, cost: np.ndarray) -> float:
    from scipy.optimize import linprog
    from scipy.sparse import eye, hstack, kron, vstack

    na, nb = cost.shape
    # plan P (na, nb) flattened row-major: row sums = wa, column sums = wb
    a_eq = vstack([kron(eye(na), np.ones((1, nb))), hstack([eye(nb)] * na)]).tocsr()
    res = linprog(
        cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([wa, wb]), bounds=(0, None), method="highs"
    )
    if res.status != 0:
        raise AuglensError(f"EMD solver (linprog) failed: {res.message}")
    return float(res.fun)


def _emd_solver(backend: EmdBackend) -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    if backend == "linprog":
        return _emd_linprog
    if backend not in ("auto", "pot"):
        raise AuglensError(f"unknown EMD backend '{backend}'; valid: auto, pot, linprog")
    try:
        import ot  # noqa: F401
    except ImportError:
        if backend == "pot":
            raise AuglensError(
                "EMD backend 'pot' needs the 'pot' package (pip install pot)"
            ) from None
        return _emd_linprog
    return _emd_pot


@METRICS.register("emd")
def _metric_emd(ctx: MapContext) -> Tensor:
    """Exact earth mover's distance (pixels) between the maps normalised to sum 1; slow, opt-in."""
    h, w = _need_spatial(ctx, "emd")
    _check_nonnegative(ctx.maps, "emd")
    solve = _emd_solver(ctx.emd_backend)
    coords = _pixel_coords(h, w)
    a = ctx.a.to(torch.float64).cpu().numpy()
    b = ctx.b.to(torch.float64).cpu().numpy()
    out = np.full(ctx.n_pairs, np.nan)
    for i in range(ctx.n_pairs):
        sa, sb = a[i].sum(), b[i].sum()
        if sa == 0 or sb == 0:
            continue
        ia, ib = np.flatnonzero(a[i]), np.flatnonzero(b[i])  # zero-mass pixels carry no flow
        wa, wb = a[i, ia] / sa, b[i, ib] / sb
        d = coords[ia, None, :] - coords[None, ib, :]
        out[i] = solve(wa / wa.sum(), wb / wb.sum(), np.sqrt((d * d).sum(-1)))
    return torch.from_numpy(out).to(ctx.device)


@METRICS.register("class_kld")
def _metric_class_kld(ctx: MapContext) -> Tensor:
    """KL(p_baseline ‖ p_other) in nats over softmax class distributions (needs logits)."""
    la, lb = ctx.logits()
    out = class_kld(la, lb, kind=ctx.logits_kind)
    if out.shape[0] != ctx.n_pairs:
        raise AuglensError(
            f"logits describe {out.shape[0]} images but there are {ctx.n_pairs} maps"
        )
    return out.to(ctx.device)


# ------------------------------------------------------------------------------ public functions


def mad(a: Tensor, b: Tensor) -> Tensor:
    """Mean |a − b| per pair of min-max normalised maps (N, h, w) or (N, n) → (N,) float64."""
    return _single("mad", _metric_mad, a, b)


def msd(a: Tensor, b: Tensor) -> Tensor:
    """Mean (a − b)² per pair of min-max normalised maps (N, h, w) or (N, n) → (N,) float64."""
    return _single("msd", _metric_msd, a, b)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r per pair of flattened maps → (N,) float64; NaN where either map is constant."""
    return _single("pearson", _metric_pearson, a, b)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman ρ per pair, average ranks for ties (= scipy.stats.spearmanr) → (N,) float64.

    NaN where either map is constant.
    """
    return _single("spearman", _metric_spearman, a, b)


def overlap_rate(a: Tensor, b: Tensor, y: float) -> Tensor:
    """|T_Y(a) ∩ T_Y(b)| / |T_Y(a)| per pair → (N,) float64 in [0, 1]. Y in percent.

    T_Y(m) = the ⌈Y·n/100⌉ highest pixels of m, stable sort descending (ties → lower index first).
    """
    top_count(1, y)
    return _single("overlap_rate", _overlap_metric(y), a, b)


def topk_iou(a: Tensor, b: Tensor, y: float) -> Tensor:
    """|T_Y(a) ∩ T_Y(b)| / |T_Y(a) ∪ T_Y(b)| per pair → (N,) float64, same T_Y as overlap_rate."""
    top_count(1, y)
    return _single("topk_iou", _iou_metric(y), a, b)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM per pair of min-max normalised maps (N, h, w) → (N,) float64.

    Equal to ``skimage.metrics.structural_similarity(na, nb, data_range=1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, win_size=ssim_window(h, w))`` on the normalised maps:
    11-tap Gaussian with 'reflect' padding; a border of (win_size − 1) / 2 pixels is excluded,
    win_size = 11 clipped to the largest odd number ≤ min(h, w). Two constant maps give 1.
    """
    return _single("ssim", _metric_ssim, a, b)


def center_of_mass_shift(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distance in pixels between the intensity centroids of a and b (N, h, w) → (N,).

    Centroid = Σ m(i, j)·(i, j) / Σ m with pixel centres at integer (row, col). Maps must be
    non-negative; NaN where a map sums to 0.
    """
    return _single("com_shift", _metric_com_shift, a, b)


def emd(a: Tensor, b: Tensor, *, backend: EmdBackend = "auto") -> Tensor:
    """Exact earth mover's distance in pixels between maps (N, h, w) normalised to sum 1 → (N,).

    Ground distance: Euclidean between pixel centres. Maps must be non-negative; NaN where a map
    sums to 0. ``backend``: 'pot' (``ot.emd2`` network simplex), 'linprog' (scipy HiGHS) or 'auto'
    (POT if installed). Solved pair by pair on the CPU: slow for large maps.
    """
    return _single("emd", _metric_emd, a, b, backend)


def _validate_logits(a: object, b: object, kind: LogitsKind) -> tuple[Tensor, Tensor]:
    """Check two (N, K) logit/probability tensors; return them as float64."""
    if kind not in ("logits", "probs"):
        raise AuglensError(f"unknown kind '{kind}'; valid: logits, probs")
    a, b = _as_tensor(a, f"{kind} a"), _as_tensor(b, f"{kind} b")
    if a.shape != b.shape or a.ndim != 2:
        raise AuglensError(
            f"class_kld needs two (N, K) tensors of the same shape, got a {tuple(a.shape)} vs "
            f"b (baseline) {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise AuglensError(f"{kind} are on different devices: a {a.device} vs b {b.device}")
    problems = [m for m in (_check_finite(a, "a"), _check_finite(b, "b (baseline)")) if m]
    if problems:
        raise AuglensError(
            f"{kind} contain NaN/inf: " + "; ".join(p.replace("maps", "rows") for p in problems)
        )
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    if kind == "probs" and a64.shape[0]:
        for label, p in (("a", a64), ("b (baseline)", b64)):
            if bool((p < 0).any()) or bool(((p.sum(1) - 1).abs() > 1e-3).any()):
                raise AuglensError(
                    f"probabilities {label} must be non-negative with rows summing to 1; pass "
                    "logits with kind='logits'"
                )
    return a64, b64


def class_kld(a: Tensor, b: Tensor, *, kind: LogitsKind = "logits") -> Tensor:
    """Class-KLD per image, KL(p_b ‖ p_a) = Σ_k p_b,k (log p_b,k − log p_a,k) in nats → (N,).

    ``a``: other model, ``b``: baseline, both (N, K). ``kind='logits'`` (default): p = softmax,
    computed as log_softmax in float64. ``kind='probs'``: rows must be non-negative and sum to 1
    (±1e-3; renormalised in float64); p_a = 0 where p_b > 0 gives inf. Tiny negative rounding is
    clamped to 0.
    """
    a64, b64 = _validate_logits(a, b, kind)
    if kind == "logits":
        la, lb = F.log_softmax(a64, 1), F.log_softmax(b64, 1)
        return (lb.exp() * (lb - la)).sum(1).clamp_(min=0.0)
    pa, pb = a64 / a64.sum(1, keepdim=True), b64 / b64.sum(1, keepdim=True)
    return (torch.xlogy(pb, pb) - torch.xlogy(pb, pa)).sum(1).clamp_(min=0.0)


# ------------------------------------------------------------------------------ compare / stream


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


def _block_pairs(n_pixels: int, block_pairs: int | None, device: torch.device) -> int:
    if block_pairs is None:
        limit = _BLOCK_PIXELS if device.type == "cpu" else _BLOCK_PIXELS_ACCELERATOR
        return max(1, limit // n_pixels)
    if block_pairs < 1:
        raise AuglensError(f"block_pairs must be ≥ 1, got {block_pairs}")
    return block_pairs


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


@contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Set torch's intra-op threads to 1 while inside (re-entrant across threads: the first to
    enter saves the old count, the last to leave restores it)."""
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            if _THREADS_STATE["saved"] != 1:
                torch.set_num_threads(1)
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0 and _THREADS_STATE["saved"] != 1:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _run(
    resolved: list[tuple[str, MetricFn]],
    maps: _Maps,
    a_logits: Tensor | None,
    b_logits: Tensor | None,
    logits_kind: LogitsKind,
    emd_backend: EmdBackend,
    block_pairs: int | None,
    workers: int | None = None,
) -> dict[str, Tensor]:
    """Evaluate resolved metrics on a validated batch, block by block (cache-sized blocks)."""
    n_pairs, n_pixels = maps.a.shape
    if a_logits is not None or b_logits is not None:
        if a_logits is None or b_logits is None:
            raise AuglensError("pass both a_logits and b_logits (N, K), or neither")
        _validate_logits(a_logits, b_logits, logits_kind)
        if a_logits.shape[0] != n_pairs:
            raise AuglensError(
                f"logits describe {a_logits.shape[0]} images but there are {n_pairs} map pairs"
            )
    for name, fn in resolved:  # whole-batch counts in the error, before any block runs
        if fn in (_metric_com_shift, _metric_emd):
            _check_nonnegative(maps, name)
    device = maps.a.device
    step = _block_pairs(n_pixels, block_pairs, device)
    n_workers = _workers(workers) if device.type == "cpu" else 1

    def block(s: int) -> list[Tensor]:
        e = s + step
        ctx = MapContext._checked(
            maps.rows(s, e),
            None if a_logits is None else a_logits[s:e],
            None if b_logits is None else b_logits[s:e],
            logits_kind,
            emd_backend,
        )
        return [fn(ctx) for _, fn in resolved]

    starts = range(0, max(n_pairs, 1), step)
    if device.type != "cpu":
        blocks = [block(s) for s in starts]
    else:
        # Blocks are small: torch's own OpenMP threads would only add barriers (pathological
        # when the cores are shared), so blocks run single-threaded, spread over a thread pool.
        with _single_threaded_torch():
            if n_workers == 1 or len(starts) == 1:
                blocks = [block(s) for s in starts]
            else:
                blocks = list(_pool(n_workers).map(block, starts))
    return {
        name: torch.cat([b[i] for b in blocks]) if len(blocks) > 1 else blocks[0][i]
        for i, (name, _) in enumerate(resolved)
    }


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(n_workers: int) -> ThreadPoolExecutor:
    """A persistent pool per size: fresh threads per call would each take a new malloc arena and
    let the process's resident memory creep up over thousands of calls."""
    with _POOLS_LOCK:
        pool = _POOLS.get(n_workers)
        if pool is None:
            pool = _POOLS[n_workers] = ThreadPoolExecutor(
                max_workers=n_workers, thread_name_prefix="auglens-metrics"
            )
        return pool


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, torch.get_num_threads())
    if workers < 1:
        raise AuglensError(f"workers must be ≥ 1, got {workers}")
    return workers


def _single(
    name: str, fn: MetricFn, a: Tensor, b: Tensor, emd_backend: EmdBackend = "auto"
) -> Tensor:
    maps = _validate_maps(a, b)
    return _run([(name, fn)], maps, None, None, "logits", emd_backend, None)[name]


def compare_maps(
    a: Tensor,
    b: Tensor,
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    ys: Sequence[float] = (5, 10, 20),
    *,
    a_logits: Tensor | None = None,
    b_logits: Tensor | None = None,
    logits_kind: LogitsKind = "logits",
    emd_backend: EmdBackend = "auto",
    block_pairs: int | None = None,
    workers: int | None = None,
) -> dict[str, Tensor]:
    """Compute several metrics on one batch of pairs, sharing work → {name: (N,) float64}.

    ``a`` other model's maps, ``b`` baseline maps, (N, h, w) or (N, n). One min-max normalisation
    serves MAD/MSD/Pearson/SSIM; one stable descending sort per map serves Spearman and every top-Y
    threshold. The batch is processed in blocks of ``block_pairs`` pairs (default: ≈ 131 K pixels
    per block, so intermediates stay in cache) spread over ``workers`` threads (default:
    ``torch.get_num_threads()``). ``class_kld`` needs ``a_logits``/``b_logits`` (N, K). Unknown
    names raise :class:`AuglensError` listing the valid ones.
    """
    resolved = resolve_metrics(metrics, ys)
    maps = _validate_maps(a, b)
    return _run(resolved, maps, a_logits, b_logits, logits_kind, emd_backend, block_pairs, workers)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def _release_free_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``); no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def count_nans(results: dict[str, Tensor]) -> dict[str, int]:
    """Number of NaN values per metric (constant maps for Pearson/Spearman, empty maps for EMD…)."""
    return {name: int(torch.isnan(v).sum()) for name, v in results.items()}


class MapComparison:
    """Stateful (TorchCAM-style) accumulator: ``update(a, b)`` per batch, ``compute()`` at the end.

    Feed pairs in chunks of any size; each chunk is processed block by block (see
    :func:`compare_maps`), so working memory is bounded by the chunk itself. Per-image results are
    kept on the CPU as float64 (8 bytes per pair and metric). NaNs (e.g. constant maps) are kept in
    place and counted by :meth:`nan_counts`.

    ``trim_memory`` (default True): after each update, hand freed heap memory back to the OS
    (glibc ``malloc_trim``; a no-op elsewhere). Without it, glibc's per-thread arenas keep the
    freed block intermediates and resident memory creeps up by a few MB per chunk.
    """

    def __init__(
        self,
        metrics: str | Iterable[str] = DEFAULT_METRICS,
        ys: Sequence[float] = (5, 10, 20),
        *,
        logits_kind: LogitsKind = "logits",
        emd_backend: EmdBackend = "auto",
        block_pairs: int | None = None,
        workers: int | None = None,
        trim_memory: bool = True,
    ) -> None:
        self._resolved = resolve_metrics(metrics, ys)
        self.names = [name for name, _ in self._resolved]
        self.logits_kind: LogitsKind = logits_kind
        self.emd_backend: EmdBackend = emd_backend
        self.block_pairs = block_pairs
        self.workers = workers
        self.trim_memory = trim_memory
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated value."""
        self._values: dict[str, list[Tensor]] = {name: [] for name in self.names}
        self.n_pairs = 0

    def __len__(self) -> int:
        return self.n_pairs

    def update(
        self,
        a: Tensor,
        b: Tensor,
        *,
        a_logits: Tensor | None = None,
        b_logits: Tensor | None = None,
    ) -> None:
        """Add a chunk of pairs: ``a`` other maps, ``b`` baseline maps (N, h, w) or (N, n)."""
        maps = _validate_maps(a, b)
        out = _run(
            self._resolved, maps, a_logits, b_logits, self.logits_kind, self.emd_backend,
            self.block_pairs, self.workers,
        )  # fmt: skip
        for name, v in out.items():
            self._values[name].append(v.detach().to("cpu", torch.float64))
        self.n_pairs += maps.a.shape[0]
        del maps, out
        if self.trim_memory:
            _release_free_memory()

    def compute(self) -> dict[str, Tensor]:
        """{name: (pairs so far,) float64 CPU tensor}, in update order."""
        return {
            name: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64)
            for name, v in self._values.items()
        }

    def nan_counts(self) -> dict[str, int]:
        """Number of NaN values per metric so far (never dropped silently)."""
        return {name: sum(int(torch.isnan(t).sum()) for t in v) for name, v in self._values.items()}
