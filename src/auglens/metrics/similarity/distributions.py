"""Metrics on mass distributions: centre-of-mass shift and exact EMD of non-negative maps, and
Class-KLD of the models' class distributions (each registered in :data:`.definitions.METRICS`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import AuglensError
from .context import EmdBackend, LogitsKind, MapContext
from .definitions import METRICS, _need_spatial
from .maps import _as_tensor, _check_finite, _check_nonnegative

#: The direction of Class-KLD, recorded with every output that contains it.
CLASS_KLD_DIRECTION = "KL(p_baseline || p_other)"


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
