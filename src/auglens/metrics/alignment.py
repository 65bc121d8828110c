"""Human alignment of attribution maps with annotated regions (SPEC §4, Study B).

Every metric takes a batch: ``maps`` (N, H, W), real, finite, non-negative, at **input
resolution** (stored maps are at feature resolution: bring them up with
:func:`auglens.explain.base.upsample` — bilinear, ``align_corners=False`` — and record that), and
``regions`` bool (N, H, W), the ground-truth region of each image (a mask, or the union of boxes
from :func:`boxes_to_mask`). Results are float64 tensors (N,) on the input device, accumulated in
float64.

Conventions:

- **Boxes** are ``(x1, y1, x2, y2)`` integer pixel coordinates, x2/y2 exclusive, and index the
  image as ``[y1:y2, x1:x2]`` (rows = y). Coordinates are clipped to the image; a box with
  x2 ≤ x1 or y2 ≤ y1 is empty (use e.g. all zeros to pad images with fewer boxes).
- **Energy Pointing Game** = Σ map·region / Σ map on the raw map (no normalisation, no threshold).
- **Effective Heat Ratio** follows InputIBA's ``effective_heat_ratios.py`` (weight_by_heat=True):
  see :func:`effective_heat_ratio`. The quantile is numpy's default (``method='linear'``,
  Hyndman & Fan type 7) reproduced bit for bit, including numpy's two-sided interpolation formula.
  The reference divides by ``|S_q| + 1e-8``; we divide by ``|S_q|`` (≥ 1 by construction), a
  relative difference ≤ 1e-8.
- **NaN policy.** Energy PG is NaN for a map that sums to 0 (all zeros); EHR is NaN for a
  constant map (min-max gives all zeros, so no pixel is ≥ the 0.1 base threshold: the
  reference's ``np.quantile`` of an empty array would raise). NaNs stay in the output; count them
  with :func:`auglens.metrics.count_nans` on the dict of :func:`alignment_scores`.
- **Image filters** (reference protocol: box area ≤ 33 % of the image, target probability ≥ 0.6)
  are options of :func:`filter_images`; evaluate every model on the same images by intersecting
  the per-model masks with :func:`common_image_set`, and report how many each model kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import AuglensError

__all__ = [
    "EHR_BASE_THRESHOLD",
    "EHR_QUANTILES",
    "alignment_scores",
    "box_fraction",
    "boxes_to_mask",
    "common_image_set",
    "effective_heat_ratio",
    "energy_pointing_game",
    "filter_images",
]

#: Heat below this (after min-max scaling to [0, 1]) is zeroed before EHR's quantiles.
EHR_BASE_THRESHOLD = 0.1
#: EHR's quantile levels q = 0, 0.1, …, 1.0, exactly ``np.linspace(0, 1, 11)``.
EHR_QUANTILES: tuple[float, ...] = tuple(float(q) for q in np.linspace(0.0, 1.0, 11))
#: The cap of every EHR threshold, as a fraction of the map's maximum.
_EHR_CAP = 0.99


def _as_tensor(x: object, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_complex():
        raise AuglensError(f"{name} must be real-valued, got {t.dtype}")
    return t.detach()


def _check_batch(maps: object, regions: object) -> tuple[Tensor, Tensor]:
    """Validate (N, H, W) maps (finite, ≥ 0) and same-shape bool regions → (float64, bool)."""
    m = _as_tensor(maps, "maps")
    r = _as_tensor(regions, "regions")
    if m.ndim != 3:
        raise AuglensError(
            f"maps must be a batch (N, H, W) at input resolution, got {tuple(m.shape)}"
        )
    if r.shape != m.shape:
        raise AuglensError(
            f"regions {tuple(r.shape)} must have the shape of maps {tuple(m.shape)}; maps stored "
            "at feature resolution must first be brought to input resolution with "
            "auglens.explain.base.upsample (bilinear, align_corners=False)"
        )
    if r.dtype != torch.bool:
        if r.is_floating_point() and not bool(((r == 0) | (r == 1)).all()):
            raise AuglensError("regions must be boolean masks (or 0/1 values)")
        r = r != 0
    r = r.to(m.device)
    m64 = m.to(torch.float64)
    flat = m64.reshape(m64.shape[0], -1)
    if flat.numel():
        bad = ~torch.isfinite(flat).all(1)
        if bool(bad.any()):
            raise AuglensError(
                f"maps: {int(bad.sum())} of {flat.shape[0]} contain NaN or inf "
                f"(first at index {int(bad.nonzero()[0, 0])})"
            )
        neg = (flat < 0).any(1)
        if bool(neg.any()):
            raise AuglensError(
                f"maps must be non-negative (e.g. Grad-CAM after ReLU): {int(neg.sum())} of "
                f"{flat.shape[0]} have negative values (first at index "
                f"{int(neg.nonzero()[0, 0])})"
            )
    return m64, r


def boxes_to_mask(boxes: object, height: int, width: int) -> Tensor:
    """Union of boxes per image → bool (N, H, W); ``mask[i, y1:y2, x1:x2] = True`` per box.

    ``boxes``: (N, 4) or (N, M, 4) integer ``(x1, y1, x2, y2)``, x2/y2 exclusive (float tensors
    must hold whole numbers). Coordinates are clipped to [0, W] / [0, H]; a box with x2 ≤ x1 or
    y2 ≤ y1 is empty (padding). Note: x indexes columns, y rows (not swapped).
    """
    b = _as_tensor(boxes, "boxes")
    if b.ndim == 2:
        b = b[:, None]
    if b.ndim != 3 or b.shape[-1] != 4:
        raise AuglensError(
            f"boxes must be (N, 4) or (N, M, 4) as x1, y1, x2, y2; got {tuple(b.shape)}"
        )
    if height < 1 or width < 1:
        raise AuglensError(f"height and width must be ≥ 1, got {height}×{width}")
    if b.is_floating_point():
        if not bool(torch.isfinite(b).all()) or not bool((b == b.floor()).all()):
            raise AuglensError("boxes must hold integer pixel coordinates")
    b = b.to(torch.int64)
    x1, y1, x2, y2 = b.unbind(-1)  # each (N, M)
    ys = torch.arange(height, device=b.device)
    xs = torch.arange(width, device=b.device)
    in_y = (ys >= y1[..., None]) & (ys < y2[..., None])  # (N, M, H)
    in_x = (xs >= x1[..., None]) & (xs < x2[..., None])  # (N, M, W)
    return (in_y[..., :, None] & in_x[..., None, :]).any(1)


def box_fraction(regions: object) -> Tensor:
    """Fraction of the image covered by each region (e.g. the union of boxes) → float64 (N,)."""
    r = _as_tensor(regions, "regions")
    if r.ndim != 3:
        raise AuglensError(f"regions must be (N, H, W), got {tuple(r.shape)}")
    return (r != 0).reshape(r.shape[0], -1).to(torch.float64).mean(1)


def energy_pointing_game(maps: object, regions: object) -> Tensor:
    """Energy Pointing Game: Σ map·region / Σ map per image → float64 (N,) in [0, 1].

    ``maps`` (N, H, W) non-negative at input resolution, used raw (no normalisation, no
    threshold); ``regions`` bool (N, H, W). NaN for an all-zero map.
    """
    m, r = _check_batch(maps, regions)
    flat = m.reshape(m.shape[0], -1)
    total = flat.sum(1)
    inside = (flat * r.reshape(r.shape[0], -1)).sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), torch.nan)


def _np_quantile_sorted(s: Tensor, start: Tensor, m: Tensor, q: Tensor) -> Tensor:
    """numpy's default (linear) quantiles of the sorted row segments ``s[i, start_i : start_i +
    m_i]`` at levels ``q`` (Q,) → float64 (N, Q), with numpy's exact arithmetic (``_lerp``:
    a + (b−a)·γ for γ < 0.5, else b − (b−a)·(1−γ)). Rows need m ≥ 1."""
    virtual = (m.to(torch.float64) - 1)[:, None] * q[None, :]  # (N, Q): (n − 1) · q
    prev = virtual.floor()
    gamma = virtual - prev
    above = virtual >= (m - 1)[:, None]
    prev_i = torch.where(above, (m - 1)[:, None], prev.to(torch.int64))
    next_i = torch.where(above, (m - 1)[:, None], prev_i + 1)
    a = s.gather(1, start[:, None] + prev_i)
    b = s.gather(1, start[:, None] + next_i)
    diff = b - a
    return torch.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def effective_heat_ratio(
    maps: object,
    regions: object,
    *,
    base_threshold: float = EHR_BASE_THRESHOLD,
    return_curve: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Effective Heat Ratio (InputIBA) per image → float64 (N,) [, ratios (N, 11)].

    Per map: h = min-max scaled to [0, 1]; pixels with h < ``base_threshold`` are set to 0; for
    q in :data:`EHR_QUANTILES`: t_q = min(q-quantile of the kept (h ≥ 0.1) values, 0.99·max h)
    (numpy's linear quantile), S_q = {h ≥ t_q}, ratio_q = Σ_{S_q ∩ region} h / |S_q|;
    EHR = trapezoid area of ratio_q over q (``scipy.integrate.trapezoid(ratios, EHR_QUANTILES)``).
    NaN for a constant map. Vectorised: one ascending sort per map, thresholds located by
    ``searchsorted``, region heat by suffix sums.
    """
    m, r = _check_batch(maps, regions)
    n, px = m.shape[0], m.shape[1] * m.shape[2]
    q = torch.tensor(EHR_QUANTILES, dtype=torch.float64, device=m.device)
    if n == 0 or px == 0:
        empty = torch.zeros(n, dtype=torch.float64, device=m.device)
        return (empty, empty.new_zeros(n, q.numel())) if return_curve else empty
    flat = m.reshape(n, px)
    lo, hi = flat.aminmax(dim=1)
    rng = hi - lo
    constant = rng == 0
    h = (flat - lo[:, None]) / torch.where(constant, 1.0, rng)[:, None]
    h = torch.where(h >= base_threshold, h, 0.0)
    kept = (h >= base_threshold).sum(1)  # also 0 for constant maps (h ≡ 0)
    valid = (kept > 0) & ~constant
    s, order = h.sort(1)  # ascending; the kept values are the last `kept` entries
    heat_in = (h * r.reshape(n, px)).gather(1, order)
    suffix = torch.zeros(n, px + 1, dtype=torch.float64, device=m.device)
    suffix[:, :px] = heat_in.flip(1).cumsum(1).flip(1)  # suffix[:, i] = Σ_{j ≥ i} heat_in
    safe_kept = torch.where(valid, kept, 1)
    quant = _np_quantile_sorted(s, px - safe_kept, safe_kept, q)  # (N, Q)
    t = torch.minimum(quant, (s[:, -1] * _EHR_CAP)[:, None])
    first = torch.searchsorted(s.contiguous(), t.contiguous(), side="left")  # first s ≥ t
    size = (px - first).to(torch.float64)  # |S_q| ≥ 1 for valid maps (t ≤ max)
    ratios = suffix.gather(1, first) / size.clamp(min=1)
    ratios = torch.where(valid[:, None], ratios, torch.nan)
    dq = q[1:] - q[:-1]
    ehr = (dq * (ratios[:, 1:] + ratios[:, :-1]) / 2.0).sum(1)
    return (ehr, ratios) if return_curve else ehr


def alignment_scores(maps: object, regions: object) -> dict[str, Tensor]:
    """Both alignment metrics → ``{"energy_pg": (N,), "ehr": (N,)}`` float64 (NaNs kept)."""
    return {
        "energy_pg": energy_pointing_game(maps, regions),
        "ehr": effective_heat_ratio(maps, regions),  # type: ignore[dict-item]
    }


def filter_images(
    box_fraction: object | None,
    target_prob: object | None,
    max_box_fraction: float | None = 0.33,
    min_prob: float | None = 0.6,
) -> Tensor:
    """The reference protocol's image filter → bool (N,): True = keep.

    Keeps images with ``box_fraction ≤ max_box_fraction`` (area of the annotated region / image
    area, e.g. :func:`box_fraction`) and ``target_prob ≥ min_prob`` (the model's softmax
    probability of the explained class); both bounds inclusive, compared in the values' float
    dtype. A filter is disabled when its values or its threshold is None; at least one of the
    value arrays must be given (it fixes N). NaN values fail the filter.
    """
    masks = []
    n = None
    for values, thr, name, keep_le in (
        (box_fraction, max_box_fraction, "box_fraction", True),
        (target_prob, min_prob, "target_prob", False),
    ):
        if values is None:
            continue
        v = _as_tensor(values, name).reshape(-1)
        if not v.is_floating_point():  # float values keep their dtype: the threshold is
            v = v.to(torch.float64)  # rounded to it, so float32 0.33 is kept at 0.33

        if n is not None and v.numel() != n:
            raise AuglensError(f"box_fraction has {n} values but target_prob has {v.numel()}")
        n = v.numel()
        if thr is not None:
            masks.append(v <= thr if keep_le else v >= thr)
        else:
            masks.append(torch.ones_like(v, dtype=torch.bool))
    if n is None:
        raise AuglensError("filter_images needs box_fraction or target_prob (or both)")
    keep = masks[0]
    for mk in masks[1:]:
        keep = keep & mk.to(keep.device)
    return keep


def common_image_set(keep: Mapping[str, object]) -> tuple[Tensor, dict[str, int]]:
    """Intersect per-model keep masks (name → bool (N,)) → (bool (N,), kept count per model).

    The intersection is the default image set on which every model is evaluated (SPEC §4); the
    counts are each model's own filter result, to be reported.
    """
    if not keep:
        raise AuglensError("common_image_set needs at least one model's keep mask")
    masks = {k: _as_tensor(v, f"keep[{k}]").reshape(-1) != 0 for k, v in keep.items()}
    sizes = {k: v.numel() for k, v in masks.items()}
    if len(set(sizes.values())) != 1:
        raise AuglensError(f"keep masks have different lengths: {sizes}")
    it = iter(masks.values())
    common = next(it).clone()
    for v in it:
        common &= v.to(common.device)
    return common, {k: int(v.sum()) for k, v in masks.items()}
