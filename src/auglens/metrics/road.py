"""ROAD: RemOve And Debias (Rong, Leemann et al., ICML 2022; SPEC §11).

Inputs as :func:`auglens.metrics.faithfulness.deletion_insertion_curves`: ``images`` float
(N, C, H, W) normalised (the model's input space), ``maps`` (N, H, W) real at **input resolution**
(upsample stored maps with :func:`auglens.explain.base.upsample` and record it), ``targets`` (N,)
the explained classes. Outputs are float64 on the CPU.

**Noisy linear imputation** (``tleemann/road_evaluation`` ``road/imputations.py``
``NoisyLinearImputer``, copied verbatim into pytorch-grad-cam's ``metrics/road.py``): every
removed pixel p gets the value that solves, for all removed pixels at once,
s_p · x_p = Σ_{q ∈ N(p)} w_q · x_q, with the 8 neighbours q inside the image, w = 1/6 for the 4
direct and 1/12 for the 4 diagonal neighbours, s_p = Σ of those w (1 inside the image, less at the
border); known neighbours enter the right-hand side with their values, removed ones are unknowns —
the reference's sparse system (``setup_sparse_system``), one per image and removal set, all
channels as right-hand sides of one factorisation. Then Gaussian noise σ·z is added to each
removed value, z ~ N(0, 1) per channel and pixel (``noise`` σ = 0.01, the reference's default).

- *Space.* The reference imputes the [0, 1] image before normalisation (``run_road``'s
  ``transform_test``); pytorch-grad-cam imputes the normalised tensor. The imputation commutes
  with the per-channel affine normalisation (the weights of every equation sum to s_p), so only
  the noise differs: with ``input_std`` (C,) the noise is σ / std_c in normalised space = σ in
  [0, 1] pixels (the reference); ``input_std=None`` adds σ in the images' own space
  (pytorch-grad-cam).
- *Solver.* SciPy's SuperLU as the reference's ``spsolve``, but in symmetric mode
  (``permc_spec="MMD_AT_PLUS_A"``, no pivoting): the system is symmetric and its negative an
  M-matrix (diagonally dominant), so no pivoting is needed, and this ordering is ~2–40× faster on
  large images. Agreement with ``spsolve``: ~1e-14.
- *Noise draws* are seeded: z for (image, order, count) is
  ``numpy.random.default_rng([seed, image_id, order_code, count]).standard_normal((C, count))``
  (order_code 0 = MoRF, 1 = LeRF), laid over the removed pixels in ascending flat index (the
  reference's ``randn_like(res.t())`` layout). Reproducible, and common to every model.

**Orders and percentages.** For k in ``percentages`` (default 10, 20, …, 90) remove
c_k = ⌊k·P/100⌋ pixels (exact rational arithmetic, P = H·W): MoRF the c_k most relevant, LeRF the
c_k least relevant, with :func:`~auglens.metrics.faithfulness.pixel_order` (stable: ties by
ascending pixel index). k is always the share **removed**. The references differ here:
road_evaluation removes ``int(P·th_p)`` MoRF pixels, but for LeRF keeps the ``int(P·th_p)`` most
relevant (so its LeRF ``th_p`` = our 1 − k/100 and it removes ⌈k·P/100⌉), ordering by the
min-max-scaled map plus 1e-4·N(0, 1) tie-breaking noise; pytorch-grad-cam thresholds at
``np.percentile(map, p)`` (its ``percentile`` p = our 100 − k for both orders) and removes every
pixel on the removed side of the threshold — with distinct values ⌈k·(P − 1)/100⌉ pixels (103
instead of our 102 of 1024 at k = 10), with ties possibly more. With distinct map values the
removed sets of all three are nested in one another and differ by at most one pixel; they are
equal when k·P/100 is an integer (road_evaluation) or when P = 100 (pytorch-grad-cam).

**Score** = softmax probability (float64 from the logits) of the target class of the imputed
image; ``curves[order]`` (N, K) over k; ``original`` (N,) the unperturbed image's probability.
**Area** (:func:`road_scores`) = trapezoid over x = k/100 divided by the span x_K − x_1 (the mean
height; equals :func:`~auglens.metrics.faithfulness.auc` on a uniform grid; K = 1: the value).
**Inter-model score** ``road_lerf_morf`` = area(LeRF) − area(MoRF) (SPEC §5's LeRF − MoRF;
higher = removing what the map calls relevant hurts more than removing what it calls irrelevant).
pytorch-grad-cam's ``ROADCombined`` is ½·(mean_k LeRF − mean_k MoRF) of the same curves.

Efficiency: images are imputed one system at a time on the CPU (the sparse solve per image and
removal set is the irreducible part), the system set up with vectorised numpy; the imputed inputs
are streamed into forward batches of ``max_batch`` (channels-last on the CPU by default), each
input forwarded exactly once: N originals + N·|orders|·K imputed images (``settings``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import splu
from torch import Tensor, nn

from ..errors import AuglensError
from ..models.tap import model_device, preserved_state
from .faithfulness import _check_maps, _image_ids, _names, pixel_order

__all__ = [
    "DEFAULT_PERCENTAGES",
    "NEIGHBOUR_WEIGHTS",
    "ROAD_ORDERS",
    "RoadCurves",
    "imputation_noise",
    "linear_imputation",
    "noisy_linear_imputation",
    "removal_counts",
    "road_curves",
    "road_scores",
]

#: (row offset, column offset) → weight, in the reference's order (``neighbors_weights``).
NEIGHBOUR_WEIGHTS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
)  # fmt: skip
#: Removal orders, in output order (codes 0, 1 in the noise seeds).
ROAD_ORDERS: tuple[str, ...] = ("morf", "lerf")
#: Percentages of pixels removed (the reference's ``ROAD*Average`` grid).
DEFAULT_PERCENTAGES: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class RoadCurves(dict[str, Tensor]):
    """``{order: float64 (N, K)}``, order in :data:`ROAD_ORDERS`: probability of the target class
    after removing ``counts[j]`` pixels. Attributes:

    percentages: float64 (K,) k (share removed, in %); ``counts`` int64 (K,) c_k.
    original:    float64 (N,) probability on the unperturbed images.
    settings:    what produced the curves (noise, space, seed, solver, forward count…).
    """

    percentages: Tensor
    counts: Tensor
    original: Tensor
    settings: dict[str, object]


# ------------------------------------------------------------------------------ imputation


def removal_counts(n_pixels: int, percentages: Sequence[float]) -> Tensor:
    """c_k = ⌊k·P/100⌋ for each k (exact; floats are read by their decimal repr) → int64 (K,)."""
    vals = [Fraction(str(k)) for k in percentages]
    return torch.tensor([int(v * n_pixels // 100) for v in vals], dtype=torch.int64)


def _system(
    image: np.ndarray, removed: np.ndarray
) -> tuple[sp.csc_matrix, np.ndarray, np.ndarray]:
    """The reference's sparse system for one image (C, H, W) float64 and removal mask (H, W)
    bool → (A (n, n), b (n, C), flat indices of the n removed pixels, ascending)."""
    c, h, w = image.shape
    flat = image.reshape(c, -1)
    miss = removed.reshape(-1)
    idx = np.flatnonzero(miss)
    n = idx.size
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(n)
    r, col = np.divmod(idx, w)
    diag = np.ones(n)
    b = np.zeros((n, c))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    for (dy, dx), wt in NEIGHBOUR_WEIGHTS:
        rr, cc = r + dy, col + dx
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        diag[~inside] -= wt
        ids = np.flatnonzero(inside)
        nb = rr[inside] * w + cc[inside]
        unknown = miss[nb]
        known_ids, known_nb = ids[~unknown], nb[~unknown]
        b[known_ids] -= wt * flat[:, known_nb].T
        rows.append(ids[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(rows[-1].size, wt))
    vals.insert(0, -diag)
    a = sp.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    return a, b, idx


def linear_imputation(image: object, removed: object) -> Tensor:
    """Noise-free linear imputation → float64 (C, H, W): ``image`` (C, H, W), ``removed`` (H, W)
    bool (True = remove). Kept pixels are returned unchanged."""
    img = np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image, np.float64)
    rem = np.asarray(removed.detach().cpu() if isinstance(removed, Tensor) else removed)
    if img.ndim != 3 or rem.shape != img.shape[1:] or rem.dtype != np.bool_:
        raise AuglensError(
            f"linear_imputation needs image (C, H, W) and a bool mask (H, W), got "
            f"{img.shape} and {rem.shape} {rem.dtype}"
        )
    out = img.copy()
    if rem.all():
        raise AuglensError("cannot impute an image with every pixel removed (no known value)")
    if not rem.any():
        return torch.from_numpy(out)
    a, b, idx = _system(img, rem)
    lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})  # fmt: skip
    out.reshape(img.shape[0], -1)[:, idx] = lu.solve(b).T
    return torch.from_numpy(out)


def imputation_noise(seed: int, image_id: int, order: str, count: int, channels: int) -> Tensor:
    """The standard-normal draws z (C, count) float64 for one (image, order, removal count)."""
    code = ROAD_ORDERS.index(order)
    rng = np.random.default_rng([seed, image_id, code, count])
    return torch.from_numpy(rng.standard_normal((channels, count)))


def noisy_linear_imputation(
    image: object, removed: object, noise: float | Tensor = 0.0, draws: Tensor | None = None
) -> Tensor:
    """`linear_imputation` plus ``noise`` (float or (C,) per channel) × ``draws`` (C, n removed)
    on the removed pixels in ascending flat index → float64 (C, H, W). ``draws`` None: fresh
    draws from torch's global RNG (the reference; not reproducible)."""
    out = linear_imputation(image, removed)
    rem = torch.as_tensor(np.asarray(removed.cpu() if isinstance(removed, Tensor) else removed))
    idx = rem.reshape(-1).nonzero()[:, 0]
    c = out.shape[0]
    z = torch.randn(c, idx.numel(), dtype=torch.float64) if draws is None else draws.double()
    if z.shape != (c, idx.numel()):
        raise AuglensError(f"draws must be (C, n removed) = {(c, idx.numel())}, got {z.shape}")
    sigma = torch.as_tensor(noise, dtype=torch.float64).reshape(-1, 1)
    flat = out.view(c, -1)
    flat[:, idx] += sigma * z
    return out


# ------------------------------------------------------------------------------------ curves


def _percentages(values: Sequence[float], n_pixels: int) -> tuple[list[float], Tensor]:
    vals = list(values) if not isinstance(values, (int, float)) else [values]
    if not vals or any(isinstance(v, bool) or not 0 < v < 100 for v in vals):
        raise AuglensError(f"percentages must be numbers in (0, 100) (share removed), got {vals}")
    if any(b <= a for a, b in zip(vals, vals[1:], strict=False)):
        raise AuglensError(f"percentages must be strictly increasing, got {vals}")
    return [float(v) for v in vals], removal_counts(n_pixels, vals)


def _noise_std(noise: float, input_std: object, c: int) -> np.ndarray:
    if not noise >= 0:
        raise AuglensError(f"noise must be ≥ 0, got {noise}")
    if input_std is None:
        return np.full(c, float(noise))
    std = np.asarray(input_std.cpu() if isinstance(input_std, Tensor) else input_std, np.float64)
    std = std.reshape(-1)
    if std.size == 1:
        std = np.repeat(std, c)
    if std.size != c or not (std > 0).all():
        raise AuglensError(f"input_std must be a positive float or {c} values, got {std.tolist()}")
    return noise / std


def road_curves(
    model: nn.Module,
    images: Tensor,
    maps: object,
    targets: object,
    *,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    orders: Sequence[str] = ROAD_ORDERS,
    noise: float = 0.01,
    input_std: float | Sequence[float] | Tensor | None = None,
    seed: int = 0,
    image_ids: object | None = None,
    max_batch: int = 512,
    channels_last: bool | None = None,
) -> RoadCurves:
    """ROAD curves of every order → :class:`RoadCurves` (see the module docstring).

    ``input_std``: the normalisation's per-channel std, so that ``noise`` is in [0, 1] pixel
    units as in road_evaluation (None: in the images' space, as pytorch-grad-cam). ``image_ids``
    (N,) seed the noise (default 0…N−1; pass dataset indices). The model runs in eval mode under
    ``no_grad``, its state restored.
    """
    orders_ = _names(orders, ROAD_ORDERS, "orders")
    if max_batch < 1:
        raise AuglensError(f"max_batch must be ≥ 1, got {max_batch}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AuglensError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise AuglensError(f"images must be a float tensor (N, C, H, W) normalised, got {shape}")
    n, c, h, w = images.shape
    if n == 0 or h * w < 2:
        raise AuglensError(f"empty batch or image: images {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise AuglensError("images contain NaN or inf")
    m = _check_maps(maps).cpu()
    if m.shape != (n, h, w):
        raise AuglensError(
            f"maps {tuple(m.shape)} must be (N, H, W) = {(n, h, w)} at input resolution; bring "
            "feature-resolution maps up with auglens.explain.base.upsample (bilinear, "
            "align_corners=False)"
        )
    tgt = torch.as_tensor(targets.cpu() if isinstance(targets, Tensor) else targets)
    if tgt.shape != (n,) or tgt.is_floating_point() or tgt.dtype == torch.bool:
        raise AuglensError(f"targets must be {n} integer class ids, got {tuple(tgt.shape)}")
    if bool((tgt < 0).any()):
        raise AuglensError("targets must be non-negative class ids")
    pct, counts = _percentages(percentages, h * w)
    sigma = _noise_std(noise, input_std, c)
    ids = _image_ids(image_ids, n)
    ranked = {o: pixel_order(m, o).numpy() for o in orders_}  # type: ignore[arg-type]
    imgs = images.detach().cpu().double().numpy()

    def inputs() -> Iterator[np.ndarray]:
        """Originals first, then per image, order and k the imputed image (C, H, W)."""
        yield from imgs
        for i in range(n):
            for o in orders_:
                for cnt in counts.tolist():
                    removed = np.zeros(h * w, dtype=bool)
                    removed[ranked[o][i, :cnt]] = True
                    if cnt == 0:
                        yield imgs[i]
                    elif noise == 0:
                        yield linear_imputation(imgs[i], removed.reshape(h, w)).numpy()
                    else:
                        z = imputation_noise(seed, int(ids[i]), o, cnt, c)
                        yield noisy_linear_imputation(
                            imgs[i], removed.reshape(h, w), sigma, z
                        ).numpy()

    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    use_cl = device.type == "cpu" if channels_last is None else channels_last
    k = len(pct)
    total = n + n * len(orders_) * k
    job_img = np.concatenate([np.arange(n), np.repeat(np.arange(n), len(orders_) * k)])
    tgt_np = tgt.numpy().astype(np.int64)
    probs = np.empty(total, dtype=np.float64)
    batch_sizes: list[int] = []
    stream = inputs()
    with preserved_state(model, freeze_params=False), torch.no_grad():
        for a in range(0, total, max_batch):
            b = min(a + max_batch, total)
            xb = torch.from_numpy(np.stack([next(stream) for _ in range(b - a)]))
            xb = xb.to(device=device, dtype=dtype)
            if use_cl:
                xb = xb.contiguous(memory_format=torch.channels_last)
            try:
                logits = model(xb)
            except RuntimeError as e:
                if not use_cl or "view size is not compatible" not in str(e):
                    raise
                use_cl = False  # a model whose .view needs contiguous strides: retry once
                logits = model(xb.contiguous())
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != b - a:
                raise AuglensError("model output must be logits (B, K)")
            if a == 0 and bool((tgt >= logits.shape[1]).any()):
                raise AuglensError(
                    f"targets must be in [0, {logits.shape[1] - 1}] for a model with "
                    f"{logits.shape[1]} classes"
                )
            logp = F.log_softmax(logits.double(), 1)
            t = torch.from_numpy(tgt_np[job_img[a:b]]).to(device)
            probs[a:b] = logp.gather(1, t[:, None])[:, 0].exp().cpu().numpy()
            batch_sizes.append(b - a)

    out = RoadCurves()
    body = torch.from_numpy(probs[n:]).view(n, len(orders_), k)
    for j, o in enumerate(orders_):
        out[o] = body[:, j].clone()
    out.percentages = torch.tensor(pct, dtype=torch.float64)
    out.counts = counts
    out.original = torch.from_numpy(probs[:n].copy())
    out.settings = {
        "percentages": pct,
        "counts": counts.tolist(),
        "orders": list(orders_),
        "imputation": "noisy linear (tleemann/road_evaluation NoisyLinearImputer), neighbour "
        "weights 1/6 direct, 1/12 diagonal",
        "noise": float(noise),
        "noise_space": "[0, 1] pixels (noise / input_std in normalised space)"
        if input_std is not None
        else "the images' (normalised) space",
        "noise_std_per_channel": sigma.tolist(),
        "seed": seed,
        "image_ids": ids.tolist(),
        "order_ties": "stable: lower flat pixel index first",
        "solver": "scipy SuperLU, symmetric mode (MMD_AT_PLUS_A, no pivoting)",
        "score": "softmax probability of the target class",
        "area": "trapezoid over k/100 divided by the span (mean height)",
        "n_forward": total,
        "batch_sizes": batch_sizes,
        "channels_last": use_cl,
    }
    return out


def road_scores(curves: RoadCurves) -> dict[str, Tensor]:
    """Per-image areas and the inter-model score → ``{name: float64 (N,)}``:
    ``road_auc_<order>`` for each curve, ``road_lerf_morf`` = area(LeRF) − area(MoRF) when both
    are present."""
    x = curves.percentages.double() / 100
    out = {}
    for order, cv in curves.items():
        if x.numel() == 1:
            area = cv[:, 0].clone()
        else:
            area = torch.trapezoid(cv, x, dim=1) / (x[-1] - x[0])
        out[f"road_auc_{order}"] = area
    if "morf" in curves and "lerf" in curves:
        out["road_lerf_morf"] = out["road_auc_lerf"] - out["road_auc_morf"]
    return out
