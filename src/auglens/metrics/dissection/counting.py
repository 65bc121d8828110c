"""Exact streamed thresholds and counts: the top-tail quantile, float32 thresholds, bilinear
upsampling as separable matmuls, the per-unit intersection/union counter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import AuglensError
from .result import _F32_EPS


def tail_size(n: int, quantile: float) -> int:
    """How many largest values of n determine the linear-interpolation ``quantile`` exactly:
    ``n - floor(q (n - 1))``, with the rank computed in float64 as ``torch.quantile`` does."""
    rank = torch.tensor(quantile, dtype=torch.float64) * (n - 1)
    return n - int(rank.long())


def quantile_from_tail(top: Tensor, n: int, quantile: float) -> Tensor:
    """float64 (U,): the ``quantile`` of n values per row from their ``tail_size`` largest,
    ``top`` (U, m) in any order; bit-equal to ``torch.quantile(values.double(), q, dim=1)``."""
    m = tail_size(n, quantile)
    if top.shape[1] != m:
        raise AuglensError(f"need the {m} largest values per unit, got {top.shape[1]}")
    desc = top.double().sort(1, descending=True).values
    rank = torch.tensor(quantile, dtype=torch.float64) * (n - 1)
    lo, hi = int(rank.long()), int(rank.ceil().long())
    weight = rank - lo
    # ascending rank r is descending position n - 1 - r
    below, above = desc[:, n - 1 - lo], desc[:, n - 1 - hi]
    return torch.lerp(below, above, weight.expand_as(below))


def float32_floor(t: Tensor) -> Tensor:
    """float32 values rounded *down* from float64 ``t``: for float32 x, ``x > t ⟺ x > out``."""
    f = t.float()
    over = f.double() > t
    if bool(over.any()):
        f = torch.where(over, torch.nextafter(f, torch.full_like(f, -math.inf)), f)
    return f


def bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """float64 (n_out, n_in): 1-D linear resampling weights with ``align_corners=False``
    (half-pixel centres, edge clamping), the convention of ``F.interpolate(mode="bilinear")``."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    w1 = src - i0
    mat = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    mat.index_put_((rows, i0), 1.0 - w1, accumulate=True)
    mat.index_put_((rows, i1), w1, accumulate=True)
    return mat


def upsample_maps(
    maps: Tensor, size: tuple[int, int], weights: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Maps (A, h, w) → (A, H, W), bilinear with ``align_corners=False``, as two float matmuls
    (separable weights of `bilinear_matrix`, or ``weights`` = (rows (H, h), cols (W, w)) in the
    maps' dtype); equal to ``F.interpolate`` up to float rounding (which itself differs by batch
    layout), and ~5× faster on CPU."""
    a, h, w = maps.shape
    if weights is None:
        weights = bilinear_matrix(h, size[0]).to(maps), bilinear_matrix(w, size[1]).to(maps)
    ry, rx = weights
    return torch.matmul(ry, (maps.reshape(a * h, w) @ rx.T).view(a, h, size[1]))


class _Counter:
    """Pass-2 accumulator of the exact int64 counts (see module docstring)."""

    def __init__(
        self,
        thresholds32: Tensor,
        concept_categories: Sequence[str],
        categories: list[str],
        label_size: tuple[int, int],
        layer_pairs: list[tuple[int, int]],
        device: torch.device,
        chunk_elems: int,
    ) -> None:
        self.t32 = thresholds32.to(device)
        self.u = int(thresholds32.shape[0])
        self.c = len(concept_categories)
        self.size = label_size
        self.hw = label_size[0] * label_size[1]
        self.pairs = layer_pairs
        self.device = device
        self.chunk = max(1, chunk_elems // self.hw)
        g = len(categories)
        cat_of = torch.zeros(self.c, g, device=device)
        for i, name in enumerate(concept_categories):
            if i > 0:
                cat_of[i, categories.index(name)] = 1.0
        self.cat_of = cat_of
        self.g = g
        # category index + 1 of every concept id (0: unlabelled)
        self.cat_lut = (cat_of.argmax(1) + 1) * (cat_of.sum(1) > 0)
        z = dict(dtype=torch.long, device=device)
        self.inter = torch.zeros(self.u * self.c, **z)
        self.label_px = torch.zeros(self.c, **z)
        self.unit_px = torch.zeros(self.u, **z)
        self.unit_cat = torch.zeros(self.u, g, **z)
        self.unit_touch = torch.zeros(self.u, g, **z)
        self.n_maps = 0
        self.n_active = 0
        self._rw: tuple[Tensor, Tensor] | None = None

    def _weights(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        if self._rw is None:
            h, w = maps.shape[-2:]
            self._rw = (
                bilinear_matrix(h, self.size[0]).to(maps),
                bilinear_matrix(w, self.size[1]).to(maps),
            )
        return self._rw

    def add(self, acts: Tensor, labels: Tensor) -> None:
        """Add a batch: acts float32 (B, U, h, w), labels integer (B, L, H, W)."""
        b, nl = labels.shape[:2]
        lab = labels.to(self.device).reshape(b, nl * self.hw)  # integer ids, row = image
        if self.pairs:  # one count per (pixel, concept) even if several layers carry the id
            lab = lab.clone()
            per_layer = lab.view(b, nl, self.hw)
            for j, k in self.pairs:
                per_layer[:, k].masked_fill_(per_layer[:, k] == per_layer[:, j], 0)
        big = b * self.c >= 2**31
        offs = torch.arange(
            0, b * self.c, self.c, device=self.device, dtype=torch.long if big else torch.int32
        )
        per_img = torch.bincount((lab + offs[:, None]).view(-1), minlength=b * self.c)
        per_img = per_img.view(b, self.c)
        per_img[:, 0] = 0
        self.label_px += per_img.sum(0)
        has_cat = ((per_img > 0).float() @ self.cat_of > 0).long()  # (B, G)
        lab_flat = lab.view(-1)
        layer_offs = torch.arange(nl, device=self.device) * self.hw

        same = tuple(acts.shape[-2:]) == self.size
        lo, hi = torch.aminmax(acts.reshape(b, self.u, -1), dim=2)
        if same:
            active = hi > self.t32
        else:  # upsampled values ≤ max + rounding: a rigorous bound, so skipped maps stay empty
            margin = 16 * _F32_EPS * torch.maximum(hi, -lo) + torch.finfo(torch.float32).tiny
            active = hi + margin > self.t32
        sel = active.nonzero()  # (A, 2) rows (image, unit)
        self.n_maps += b * self.u
        self.n_active += int(sel.shape[0])
        unit_img = torch.zeros(b * self.u, dtype=torch.long, device=self.device)
        g1 = self.g + 1
        touch = torch.zeros(b * self.u * g1, dtype=torch.long, device=self.device)
        for s in range(0, sel.shape[0], self.chunk):
            bi, ui = sel[s : s + self.chunk].unbind(1)
            maps = acts[bi, ui]  # (a, h, w)
            if not same:
                maps = upsample_maps(maps, self.size, self._weights(maps))
            t = self.t32.index_select(0, ui)[:, None, None]
            hit = (maps > t).view(-1, self.hw).nonzero()  # (k, 2) rows (map, pixel)
            if hit.shape[0] == 0:
                continue
            row, pix = hit.unbind(1)
            pb, pu = bi.index_select(0, row), ui.index_select(0, row)
            pair = pb * self.u + pu
            unit_img += torch.bincount(pair, minlength=b * self.u)
            at = (pb * (nl * self.hw) + pix)[:, None] + layer_offs  # (k, L) flat label index
            ids = lab_flat.index_select(0, at.view(-1)).long()  # (k·L,)
            keys = pu[:, None] * self.c + ids.view_as(at)
            self.inter += torch.bincount(keys.view(-1), minlength=self.u * self.c)
            cat_keys = (pair * g1)[:, None] + self.cat_lut.index_select(0, ids).view_as(at)
            touch += torch.bincount(cat_keys.view(-1), minlength=b * self.u * g1)
        unit_img = unit_img.view(b, self.u)
        self.unit_px += unit_img.sum(0)
        self.unit_cat += (unit_img[:, :, None] * has_cat[:, None, :]).sum(0)
        touches = (touch.view(b, self.u, g1)[:, :, 1:] > 0).long()
        self.unit_touch += (unit_img[:, :, None] * touches).sum(0)


def _overlapping_layers(concepts: Tensor, n_concepts: int) -> list[tuple[int, int]]:
    """Pairs (j, k), j < k, of concept layers that share some concept id in the probe set."""
    present = [
        torch.bincount(concepts[:, k].reshape(-1).to(torch.int32), minlength=n_concepts)[1:] > 0
        for k in range(concepts.shape[1])
    ]
    return [
        (j, k)
        for k in range(len(present))
        for j in range(k)
        if bool((present[j] & present[k]).any())
    ]


