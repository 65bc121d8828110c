"""One metric on one batch of pairs: ``mad(a, b)``, ``spearman(a, b)``, … → (N,) float64.

Each validates the batch and runs its metric through :func:`.batching._run` (blocks, thread
pool), exactly as :func:`compare_maps` with that single metric would.
"""

from __future__ import annotations

from torch import Tensor

from .batching import _single
from .context import EmdBackend
from .definitions import (
    _iou_metric,
    _metric_mad,
    _metric_msd,
    _metric_pearson,
    _metric_spearman,
    _metric_ssim,
    _overlap_metric,
)
from .distributions import _metric_com_shift, _metric_emd
from .ranking import top_count


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
