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
(:func:`.ranking._sort_desc`). While a CPU batch runs, ``torch.get_num_threads()`` reads 1
(restored after).

Modules: :mod:`.maps` (validation, min-max normalisation), :mod:`.ranking` (top-Y sizes, the
stable descending sort, tie-aware ranks), :mod:`.context` (:class:`MapContext`, the shared
intermediates), :mod:`.definitions` (the :data:`METRICS` registry, MAD/MSD/Pearson/Spearman/
Overlap/IoU/SSIM, :func:`resolve_metrics`), :mod:`.distributions` (centre-of-mass shift, EMD,
Class-KLD), :mod:`.batching` (blocks, thread pool, :func:`compare_maps`, :class:`MapComparison`),
:mod:`.functions` (one metric per call: :func:`mad`, :func:`spearman`, ...).
"""

from .batching import MapComparison, compare_maps, count_nans
from .context import MapContext
from .definitions import DEFAULT_METRICS, METRICS, resolve_metrics, ssim_window
from .distributions import CLASS_KLD_DIRECTION, class_kld
from .functions import (
    center_of_mass_shift,
    emd,
    mad,
    msd,
    overlap_rate,
    pearson,
    spearman,
    ssim,
    topk_iou,
)
from .maps import minmax_normalize
from .ranking import average_ranks, top_count

# The ``x as x`` imports above of private helpers keep ``from auglens.metrics.similarity import
# _sort_desc`` (and the like, used by tests) working; they are not public and not in __all__.
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
