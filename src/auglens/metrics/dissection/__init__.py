"""Network Dissection (Bau et al. 2017; reference CSAILVision/NetDissect-Lite), SPEC §6.

For every unit k of one layer and every concept c of a densely labelled probe set:

* ``T_k`` = the ``quantile`` (0.995) quantile of the unit's raw activations over every spatial
  position of every probe image, *exactly* as ``torch.quantile(all_values.double(), quantile)``
  (linear interpolation, the numpy default). Streamed: with n values per unit the quantile needs
  only the sorted values at ranks ``floor(q(n-1))`` and ``ceil(q(n-1))``, so a running per-unit
  top-m buffer, ``m = n - floor(q(n-1))`` (≈ 0.005 n + 1), merged batch by batch with
  ``torch.topk``, gives the exact value (memory O(units · m)).
  ``thresholds`` are float64; masks use ``act > T32`` with T32 = T rounded *down* to float32,
  which for float32 activations is the same test as ``act > T``.
* ``M_k`` = bilinear upsampling (``align_corners=False``, `upsample_maps`: separable float32
  matmuls, equal to ``F.interpolate`` up to float rounding) of the unit's map to label
  resolution, then ``> T_k`` (no interpolation when both resolutions agree). ``L_c`` = pixels
  where *any* concept layer holds id c. Counts are exact int64 sums over the probe set:
  ``IoU(k, c) = Σ|M_k ∧ L_c| / Σ|M_k ∨ L_c|`` (0 where the union is empty).
* Union convention (``union=``), ``union = Σ'|M_k| + |L_c| - |M_k ∧ L_c|`` where Σ' runs over:
  ``"category"`` (default) the images that carry *some* label of c's category (any layer), i.e.
  the probe set of a category is the images annotated for it (as in Broden, where categories
  come from different source datasets); ``"all"`` every probe image (the literal SPEC §6 sum;
  identical to "category" when every image is labelled for every category, as in ``shapes``);
  ``"netdissect"`` the (image, unit) pairs whose mask M_k touches a label of c's category in
  that image (NetDissect-Lite ``tally_units_cat``, exactly). All three totals are kept, so any
  convention can be read from one result (`DissectionResult.iou`).
* A unit's best concept is the argmax of IoU over ids ≥ 1 (lowest id on ties); the unit is a
  *detector* if that IoU > ``iou_threshold`` (0.04). Unique concepts per category count the
  distinct best concepts of detector units.

Two passes over the probe set, both in batches (pass 1: thresholds, pass 2: counts). Pass 1 keeps
the layer's activations when they fit in ``activation_cache_bytes``, and pass 2 then reuses them
(one forward pass in total; else a second forward). Pass 2 skips (image, unit) maps whose maximum
is below ``T32`` by more than a float-rounding margin: bilinear output is a convex combination of
input values, so such maps cannot exceed the threshold anywhere (results are unchanged).

`dissect_cached` stores results under a key built from the checkpoint file's sha256 (never the
architecture name), the layer, quantile, IoU threshold, union convention, the probe set's identity
and the normalisation, atomically as parquet.
"""

from .cache import (
    dissect_cached,
    dissection_cache_key,
    load_dissection,
    normalize_fingerprint,
    probe_fingerprint,
    save_dissection,
)
from .core import dissect
from .counting import bilinear_matrix, float32_floor, quantile_from_tail, tail_size, upsample_maps
from .result import DISSECTION_VERSION, DissectionResult, UnionConvention

__all__ = [
    "DISSECTION_VERSION",
    "DissectionResult",
    "UnionConvention",
    "bilinear_matrix",
    "dissect",
    "dissect_cached",
    "dissection_cache_key",
    "float32_floor",
    "load_dissection",
    "normalize_fingerprint",
    "probe_fingerprint",
    "quantile_from_tail",
    "save_dissection",
    "tail_size",
    "upsample_maps",
]
