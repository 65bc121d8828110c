"""The sort/rank engine: top-Y set sizes, one stable descending sort per map, tie-aware ranks.

Ties: among equal values the lower flat pixel index ranks higher (stable sort). Spearman's
average ranks are kept doubled and centred (exact integers in float64), see
:func:`_twice_centred_tie_positions`.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ...errors import AuglensError
from .maps import _as_tensor, _sortable


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
