"""Faithfulness of attribution maps: deletion / insertion curves (SPEC §5, Study B).

Inputs: ``images`` float (N, C, H, W) already normalised (the model's input space), ``maps``
(N, H, W) real and finite at **input resolution** (stored maps are at feature resolution: use
:func:`auglens.explain.base.upsample`, bilinear ``align_corners=False``, and record it), and
``targets`` (N,) the explained class of each map. Outputs are float64 on the model's device.

Conventions:

- **Pixel orders.** P = H·W pixels, flat row-major index p = y·W + x. MoRF: descending relevance,
  ties by ascending pixel index (stable sort); LeRF: ascending relevance, ties likewise; RaO
  ("random"): K uniform permutations per image drawn by ``numpy.random.default_rng([seed,
  image_id])``, so they depend only on (seed, image id, P, K) — never on the model or the map:
  every model sees the same permutations. ``image_ids`` default to 0…N−1 (positions in the batch;
  pass dataset indices to keep them stable across batches/subsets).
- **Steps.** n steps; after step k (k = 0…n) the first c_k = ⌊k·P/n⌋ pixels of the order are
  changed (all channels together), so the curve has n + 1 points at fractions k/n, and c_k = k·P/n
  exactly when n divides P (RISE's ``step = P/n``).
- **Deletion** replaces the changed pixels with ``baseline`` (default 0 in normalised space = the
  dataset mean). **Insertion** starts from a blurred copy and pastes the original pixels back. The
  blur is ``torchvision.transforms.functional.gaussian_blur(images, kernel 11, sigma 5)`` applied
  to the **normalised** input; its reflect padding and normalised kernel commute with the
  per-channel affine normalisation, so this equals normalising the blurred [0, 1] image (to float
  rounding). RISE blurs with zero padding instead (darker borders).
- **Score** = softmax probability (float64 from the logits) of the target class. Step 0 of deletion
  and step n of insertion are the unperturbed image, step n of deletion the all-baseline image,
  step 0 of insertion the blurred image: each is computed once and shared by every order.
- **AUC** = trapezoid over the uniform grid on [0, 1] (RISE ``evaluation.py``):
  (Σ c − c₀/2 − c_n/2) / n. The RaO curve is the mean of the K per-permutation curves (so its AUC
  is the mean of their AUCs).
- **Inter-model scores** (:func:`faithfulness_scores`, higher = the ordering matters more than the
  model's tolerance of occlusion): ``delta_del`` = AUC_del(RaO) − AUC_del(MoRF), ``delta_ins`` =
  AUC_ins(MoRF) − AUC_ins(RaO), ``lerf_morf_del`` = AUC_del(LeRF) − AUC_del(MoRF),
  ``lerf_morf_ins`` = AUC_ins(MoRF) − AUC_ins(LeRF).

Efficiency: all perturbed inputs are produced from a per-pixel rank table by the cumulative mask
``rank < c_k`` (no sequential editing), chunk by chunk of ``max_batch`` images, and pushed through
the model in those large batches (channels-last memory on the CPU by default, as the explainers).
Each distinct input is forwarded exactly once; nothing else runs through the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from ..errors import AuglensError
from ..models.tap import model_device, model_dtype, preserved_state
from ..stats import bootstrap_ci

__all__ = [
    "KINDS",
    "ORDERS",
    "FaithfulnessCurves",
    "ScoreSummary",
    "auc",
    "deletion_insertion_curves",
    "faithfulness_scores",
    "pixel_counts",
    "pixel_order",
    "random_orders",
    "summarize_scores",
]

Kind = Literal["deletion", "insertion"]
Order = Literal["morf", "lerf", "random"]

#: Curve kinds, in output order.
KINDS: tuple[str, ...] = ("deletion", "insertion")
#: Pixel orders: most relevant first, least relevant first, random.
ORDERS: tuple[str, ...] = ("morf", "lerf", "random")


class FaithfulnessCurves(dict[tuple[str, str], Tensor]):
    """``{(kind, order): float64 (N, n_steps + 1)}`` with kind in :data:`KINDS`, order in
    :data:`ORDERS`; curve[i, k] = score after c_k changed pixels. Attributes:

    per_permutation: ``{kind: float64 (N, K, n_steps + 1)}``, the RaO curves before averaging.
    random_orders:   int64 (N, K, P) permutations used (row = pixel indices in change order), or
                     None without "random".
    pixel_counts:    int64 (n_steps + 1,) c_k; ``fractions`` float64 (n_steps + 1,) = k / n.
    settings:        what produced the curves (baseline, blur, seed, forward count, batch sizes…).
    """

    per_permutation: dict[str, Tensor]
    random_orders: Tensor | None
    pixel_counts: Tensor
    fractions: Tensor
    settings: dict[str, object]


class ScoreSummary(NamedTuple):
    """Mean of a per-image score with its percentile-bootstrap CI (NaNs excluded and counted)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    n_nan: int


# ------------------------------------------------------------------------------------- orders


def pixel_counts(n_pixels: int, n_steps: int) -> Tensor:
    """c_k = ⌊k·P/n⌋ for k = 0…n → int64 (n + 1,): pixels changed after step k."""
    if n_steps < 1:
        raise AuglensError(f"n_steps must be ≥ 1, got {n_steps}")
    return torch.arange(n_steps + 1, dtype=torch.int64) * n_pixels // n_steps


def _check_maps(maps: object) -> Tensor:
    m = maps if isinstance(maps, Tensor) else torch.as_tensor(np.asarray(maps))
    if m.ndim != 3 or m.is_complex():
        raise AuglensError(f"maps must be a real batch (N, H, W), got {tuple(m.shape)}")
    m = m.detach()
    if m.dtype == torch.bool or not m.is_floating_point():
        m = m.to(torch.float64)
    if m.numel() and not bool(torch.isfinite(m).all()):
        bad = ~torch.isfinite(m.reshape(m.shape[0], -1)).all(1)
        raise AuglensError(
            f"maps: {int(bad.sum())} of {m.shape[0]} contain NaN or inf "
            f"(first at index {int(bad.nonzero()[0, 0])})"
        )
    return m


def pixel_order(maps: object, order: Literal["morf", "lerf"]) -> Tensor:
    """Pixel indices in change order → int64 (N, P): ``out[i, j]`` = the j-th pixel changed.

    MoRF: descending value, LeRF: ascending; both stable (ties: lower flat index first).
    """
    m = _check_maps(maps)
    flat = m.reshape(m.shape[0], -1)
    if order == "morf":
        return flat.sort(dim=1, descending=True, stable=True).indices
    if order == "lerf":
        return flat.sort(dim=1, descending=False, stable=True).indices
    raise AuglensError(f"unknown order '{order}'; valid: morf, lerf (random: random_orders)")


def _image_ids(image_ids: object | None, n: int) -> np.ndarray:
    if image_ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(image_ids.cpu() if isinstance(image_ids, Tensor) else image_ids)
    if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
        raise AuglensError(f"image_ids must be {n} integers, got shape {ids.shape} ({ids.dtype})")
    if (ids < 0).any():
        raise AuglensError("image_ids must be non-negative")
    return ids.astype(np.int64)


def random_orders(image_ids: object, n_pixels: int, n_random: int, seed: int = 0) -> Tensor:
    """RaO permutations → int64 (N, K, P): ``out[i, k]`` = pixel indices in change order.

    Row i depends only on (seed, image_ids[i], P, K): drawn by
    ``numpy.random.default_rng([seed, image_id]).permuted(tile(arange(P), (K, 1)), axis=1)``.
    """
    if n_random < 1:
        raise AuglensError(f"n_random must be ≥ 1, got {n_random}")
    if seed < 0:
        raise AuglensError(f"seed must be non-negative, got {seed}")
    ids = _image_ids(image_ids, len(image_ids))  # type: ignore[arg-type]
    base = np.tile(np.arange(n_pixels, dtype=np.int64), (n_random, 1))
    out = np.empty((ids.size, n_random, n_pixels), dtype=np.int64)
    for i, image_id in enumerate(ids.tolist()):
        out[i] = np.random.default_rng([seed, image_id]).permuted(base, axis=1)
    return torch.from_numpy(out)


def _ranks(order: Tensor) -> Tensor:
    """Inverse permutations: (R, P) pixel indices in change order → int32 rank of each pixel."""
    r, p = order.shape
    src = torch.arange(p, dtype=torch.int32, device=order.device).expand(r, p)
    return torch.empty(r, p, dtype=torch.int32, device=order.device).scatter_(1, order, src)


# ------------------------------------------------------------------------------------- curves


def _names(values: Sequence[str], valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    vals = (values,) if isinstance(values, str) else tuple(values)
    bad = [v for v in vals if v not in valid]
    if bad or not vals or len(set(vals)) != len(vals):
        raise AuglensError(
            f"{what} must be distinct names from {', '.join(valid)}; got {list(vals)}"
        )
    return tuple(v for v in valid if v in vals)  # canonical order


def deletion_insertion_curves(
    model: nn.Module,
    images: Tensor,
    maps: object,
    targets: object,
    orders: Sequence[str] = ORDERS,
    *,
    kinds: Sequence[str] = KINDS,
    n_steps: int = 16,
    n_random: int = 4,
    seed: int = 0,
    image_ids: object | None = None,
    baseline: float | Tensor = 0.0,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    max_batch: int = 512,
    channels_last: bool | None = None,
) -> FaithfulnessCurves:
    """Deletion/insertion curves of every (kind, order) → :class:`FaithfulnessCurves`.

    ``images`` (N, C, H, W) normalised; ``maps`` (N, H, W) at input resolution; ``targets`` (N,)
    class ids; ``baseline`` float or (C,) per-channel value in normalised space. The model runs
    in eval mode under ``no_grad`` (training flags, ``requires_grad``, ``.grad`` and hooks are
    restored). Each distinct input is forwarded once, in batches of ≤ ``max_batch``: N
    unperturbed, N blurred (insertion), 1 all-baseline (deletion), and N·R·(n_steps − 1) per kind,
    R = number of orders with RaO counting K (``settings["n_forward"]``, ``["batch_sizes"]``).
    ``channels_last`` (None: True on CPU) feeds channels-last memory (scores agree to ~1e-6).
    """
    kinds_ = _names(kinds, KINDS, "kinds")
    orders_ = _names(orders, ORDERS, "orders")
    if n_steps < 1:
        raise AuglensError(f"n_steps must be ≥ 1, got {n_steps}")
    if max_batch < 1:
        raise AuglensError(f"max_batch must be ≥ 1, got {max_batch}")
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise AuglensError(f"images must be a float tensor (N, C, H, W) normalised, got {shape}")
    n, c, h, w = images.shape
    m = _check_maps(maps)
    if m.shape != (n, h, w):
        raise AuglensError(
            f"maps {tuple(m.shape)} must be (N, H, W) = {(n, h, w)} at input resolution; bring "
            "feature-resolution maps up with auglens.explain.base.upsample (bilinear, "
            "align_corners=False)"
        )
    if n == 0 or h * w == 0:
        raise AuglensError(f"empty batch: images {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise AuglensError("images contain NaN or inf")
    tgt = torch.as_tensor(targets.cpu() if isinstance(targets, Tensor) else targets)
    if tgt.shape != (n,) or tgt.is_floating_point() or tgt.dtype == torch.bool:
        raise AuglensError(f"targets must be {n} integer class ids, got {tuple(tgt.shape)}")
    if bool((tgt < 0).any()):
        raise AuglensError("targets must be non-negative class ids")
    if "insertion" in kinds_:
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise AuglensError(f"blur_kernel must be a positive odd number, got {blur_kernel}")
        if blur_kernel // 2 >= min(h, w):
            raise AuglensError(f"blur_kernel {blur_kernel} is too large for {h}×{w} images")
        if not blur_sigma > 0:
            raise AuglensError(f"blur_sigma must be > 0, got {blur_sigma}")
    ids = _image_ids(image_ids, n)

    device = model_device(model)
    dtype = model_dtype(model)
    use_cl = device.type == "cpu" if channels_last is None else channels_last
    px = h * w
    counts = pixel_counts(px, n_steps)
    x = images.detach().to(device=device, dtype=dtype)
    base = torch.as_tensor(baseline, dtype=dtype, device=device).reshape(-1)
    if base.numel() not in (1, c):
        raise AuglensError(f"baseline must be a float or a ({c},) tensor, got {base.numel()}")

    # --- rank tables: rows [MoRF (N) | LeRF (N) | RaO (N·K, image-major)], int32 ranks
    order_tables: list[Tensor] = []
    row_img: list[Tensor] = []
    row_slices: dict[str, slice] = {}
    perms = None
    start = 0
    arange_n = torch.arange(n, device=device)
    for order in orders_:
        if order == "random":
            perms = random_orders(ids, px, n_random, seed)
            table = perms.reshape(n * n_random, px).to(device)
            imgs_of_rows = arange_n.repeat_interleave(n_random)
        else:
            table = pixel_order(m, order).to(device)  # type: ignore[arg-type]
            imgs_of_rows = arange_n
        order_tables.append(_ranks(table))
        row_img.append(imgs_of_rows)
        row_slices[order] = slice(start, start + table.shape[0])
        start += table.shape[0]
    ranks = torch.cat(order_tables)
    rows_img = torch.cat(row_img)
    n_rows = ranks.shape[0]

    # --- sources: [original (N) | blurred (N, insertion) | all-baseline (1, deletion)]
    parts = [x]
    blur_at = base_at = -1
    if "insertion" in kinds_:
        blur_at = n
        parts.append(gaussian_blur(x, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma]))
    if "deletion" in kinds_:
        base_at = sum(p.shape[0] for p in parts)
        parts.append(base.reshape(1, -1, 1, 1).expand(1, c, h, w))
    sources = torch.cat(parts)
    nhwc = use_cl
    if nhwc:
        sources = sources.permute(0, 2, 3, 1).contiguous()  # (S, H, W, C)

    # --- jobs: (source outside mask, source inside mask, rank row, count, image); count 0 = none
    job_out, job_in, job_row, job_cnt, job_img = [], [], [], [], []

    def add(out_s: Tensor, in_s: Tensor, row: Tensor, cnt: Tensor, img: Tensor) -> None:
        job_out.append(out_s)
        job_in.append(in_s)
        job_row.append(row)
        job_cnt.append(cnt)
        job_img.append(img)

    zeros = torch.zeros(n, dtype=torch.int64, device=device)
    add(arange_n, arange_n, zeros, zeros, arange_n)  # unperturbed
    if blur_at >= 0:
        add(arange_n + blur_at, arange_n, zeros, zeros, arange_n)  # blurred
    if base_at >= 0:
        one = torch.full((1,), base_at, device=device)
        add(one, one, zeros[:1], zeros[:1], torch.full((1,), -1, device=device))
    mid = n_steps - 1
    kind_offset: dict[str, int] = {}
    if mid > 0:
        rows = torch.arange(n_rows, device=device).repeat_interleave(mid)
        steps = counts[1:n_steps].to(device).repeat(n_rows)
        imgs = rows_img.repeat_interleave(mid)
        for kind in kinds_:
            kind_offset[kind] = sum(t.numel() for t in job_img)
            if kind == "deletion":
                add(imgs, torch.full_like(imgs, base_at), rows, steps, imgs)
            else:
                add(imgs + blur_at, imgs, rows, steps, imgs)
    j_out, j_in, j_row, j_cnt, j_img = (
        torch.cat(t) for t in (job_out, job_in, job_row, job_cnt, job_img)
    )
    total = j_img.numel()
    tgt_dev = tgt.to(device=device, dtype=torch.int64)

    # --- forward in large batches
    probs = torch.empty(total, dtype=torch.float64, device=device)
    base_probs: Tensor | None = None
    batch_sizes: list[int] = []
    with preserved_state(model, freeze_params=False), torch.no_grad():
        for a in range(0, total, max_batch):
            b = min(a + max_batch, total)
            mask = ranks[j_row[a:b]] < j_cnt[a:b, None].to(torch.int32)  # (B, P)
            if nhwc:
                xin = torch.where(
                    mask.view(b - a, h, w, 1), sources[j_in[a:b]], sources[j_out[a:b]]
                ).permute(0, 3, 1, 2)  # NCHW view of channels-last memory
                if not use_cl:
                    xin = xin.contiguous()
            else:
                xin = torch.where(
                    mask.view(b - a, 1, h, w), sources[j_in[a:b]], sources[j_out[a:b]]
                )
            try:
                logits = model(xin)
            except RuntimeError as e:
                if not use_cl or "view size is not compatible" not in str(e):
                    raise
                use_cl = False  # a model whose .view needs contiguous strides: retry once
                logits = model(xin.contiguous())
            if logits.ndim != 2 or logits.shape[0] != b - a:
                raise AuglensError(f"model output must be logits (B, K), got {logits.shape}")
            if a == 0 and bool((tgt >= logits.shape[1]).any()):
                raise AuglensError(
                    f"targets must be in [0, {logits.shape[1] - 1}] for a model with "
                    f"{logits.shape[1]} classes"
                )
            logp = F.log_softmax(logits.to(torch.float64), 1)
            img = j_img[a:b]
            probs[a:b] = logp.gather(1, tgt_dev[img.clamp(min=0)][:, None])[:, 0].exp()
            if base_at >= 0 and base_probs is None:
                hit = (img < 0).nonzero()
                if hit.numel():
                    base_probs = logp[int(hit[0, 0])].exp()
            batch_sizes.append(b - a)

    # --- assemble curves
    p_orig = probs[:n]
    p_blur = probs[n : 2 * n] if blur_at >= 0 else None
    p_base = base_probs[tgt_dev] if base_probs is not None else None
    out = FaithfulnessCurves()
    out.per_permutation = {}
    for kind in kinds_:
        first, last = (p_orig, p_base) if kind == "deletion" else (p_blur, p_orig)
        assert first is not None and last is not None
        inner = (
            probs[kind_offset[kind] : kind_offset[kind] + n_rows * mid].view(n_rows, mid)
            if mid > 0
            else probs.new_zeros(n_rows, 0)
        )
        for order in orders_:
            sl = row_slices[order]
            k_per = n_random if order == "random" else 1
            body = inner[sl].view(n, k_per, mid)
            curve = torch.cat(
                [
                    first.view(n, 1, 1).expand(n, k_per, 1),
                    body,
                    last.view(n, 1, 1).expand(n, k_per, 1),
                ],
                2,
            )
            if order == "random":
                out.per_permutation[kind] = curve
            out[(kind, order)] = curve.mean(1)
    out.random_orders = perms
    out.pixel_counts = counts
    out.fractions = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    out.settings = {
        "n_steps": n_steps,
        "n_random": n_random if perms is not None else 0,
        "seed": seed,
        "image_ids": ids.tolist(),
        "baseline": base.tolist(),
        "baseline_space": "normalised input",
        "insertion_start": (
            f"torchvision gaussian_blur(kernel {blur_kernel}, sigma {blur_sigma}) of the "
            "normalised input, reflect padding"
        ),
        "score": "softmax probability of the target class",
        "auc": "trapezoid on a uniform grid over [0, 1] (RISE)",
        "n_forward": total,
        "batch_sizes": batch_sizes,
        "channels_last": use_cl,
    }
    return out


# ---------------------------------------------------------------------------------- scores


def auc(curves: object) -> Tensor:
    """Normalised area under curves sampled on a uniform grid of [0, 1] → float64 (...,).

    ``curves`` (..., T), T ≥ 2: (Σ c − c₀/2 − c_{T−1}/2) / (T − 1) (RISE); a constant curve gives
    that constant.
    """
    c = curves if isinstance(curves, Tensor) else torch.as_tensor(np.asarray(curves))
    if c.ndim < 1 or c.shape[-1] < 2:
        raise AuglensError(f"curves need ≥ 2 points along the last axis, got {tuple(c.shape)}")
    c = c.to(torch.float64)
    return (c.sum(-1) - c[..., 0] / 2 - c[..., -1] / 2) / (c.shape[-1] - 1)


#: name → (kind, minuend order, subtrahend order): score = AUC(kind, minuend) − AUC(kind, sub).
SCORE_DEFINITIONS: dict[str, tuple[str, str, str]] = {
    "delta_del": ("deletion", "random", "morf"),
    "delta_ins": ("insertion", "morf", "random"),
    "lerf_morf_del": ("deletion", "lerf", "morf"),
    "lerf_morf_ins": ("insertion", "morf", "lerf"),
}


def faithfulness_scores(curves: Mapping[tuple[str, str], Tensor]) -> dict[str, Tensor]:
    """Per-image AUCs and inter-model scores → ``{name: float64 (N,)}``.

    ``auc_<kind>_<order>`` for every curve, then each score of :data:`SCORE_DEFINITIONS`
    (delta_del, delta_ins, lerf_morf_del, lerf_morf_ins) whose two curves are present.
    """
    aucs = {key: auc(v) for key, v in curves.items()}
    out = {f"auc_{kind}_{order}": v for (kind, order), v in aucs.items()}
    for name, (kind, plus, minus) in SCORE_DEFINITIONS.items():
        if (kind, plus) in aucs and (kind, minus) in aucs:
            out[name] = aucs[(kind, plus)] - aucs[(kind, minus)]
    return out


def summarize_scores(
    scores: Mapping[str, object], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, ScoreSummary]:
    """Mean and percentile-bootstrap CI of each per-image score
    (:func:`auglens.stats.bootstrap_ci`, resampling images; NaNs excluded, counted)."""
    out = {}
    for name, values in scores.items():
        v = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
        v = v.astype(np.float64).reshape(-1)
        nan = int(np.isnan(v).sum())
        finite = v[~np.isnan(v)]
        lo, hi = bootstrap_ci(finite, level=level, n_boot=n_boot, seed=seed)
        mean = float(finite.mean()) if finite.size else math.nan
        out[name] = ScoreSummary(mean, lo, hi, int(finite.size), nan)
    return out
