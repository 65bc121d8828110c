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

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..data.base import CONCEPT_CATEGORIES
from ..errors import AuglensError
from ..explain.base import feature_grid, model_device, preserved_state
from ..models.registry import default_target_layer, file_sha256, get_module, read_state_dict
from ..models.tap import LayerTap, model_dtype
from ..models.vit import token_grid
from ..utils import atomic_path

#: Bump when results for the same inputs change (invalidates caches).
DISSECTION_VERSION = 1
UnionConvention = Literal["category", "all", "netdissect"]
_UNIONS = ("category", "all", "netdissect")
_META_KEY = b"auglens.dissection"
_F32_EPS = float(torch.finfo(torch.float32).eps)


@dataclass
class DissectionResult:
    """Network Dissection of one layer: exact counts plus the settings that produced them.

    thresholds float64 (U,); intersection int64 (U, C) ``Σ|M_k ∧ L_c|`` for global concept ids
    (column 0, "unlabelled", is 0); label_pixels int64 (C,) ``Σ|L_c|``; unit_pixels
    int64 (U,) ``Σ|M_k|`` over all images; unit_pixels_by_category int64 (U, G) ``Σ|M_k|`` over
    images labelled for ``categories[g]``; unit_pixels_touching int64 (U, G) ``Σ|M_k|`` over
    images where M_k touches a label of ``categories[g]``. ``union`` selects the default
    convention of `iou` and `table`.
    """

    layer: str
    quantile: float
    iou_threshold: float
    union: UnionConvention
    thresholds: Tensor
    intersection: Tensor
    label_pixels: Tensor
    unit_pixels: Tensor
    unit_pixels_by_category: Tensor
    unit_pixels_touching: Tensor
    concept_names: list[str]
    concept_categories: list[str]
    categories: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return int(self.thresholds.shape[0])

    def union_counts(self, union: UnionConvention | None = None) -> Tensor:
        """int64 (U, C) ``Σ|M_k ∨ L_c|`` under ``union`` (default: the result's convention);
        column 0 (unlabelled) is 0."""
        union = _check_union(self.union if union is None else union)
        if union == "all":
            units = self.unit_pixels[:, None].expand_as(self.intersection)
        else:
            cat_index = {g: i for i, g in enumerate(self.categories)}
            cols = [cat_index.get(g, -1) for g in self.concept_categories]
            per_cat = (
                self.unit_pixels_by_category if union == "category" else self.unit_pixels_touching
            )
            units = torch.zeros_like(self.intersection)
            ok = [i for i, j in enumerate(cols) if j >= 0]
            units[:, ok] = per_cat[:, [cols[i] for i in ok]]
        out = units + self.label_pixels[None, :] - self.intersection
        out[:, 0] = 0
        return out

    def iou(self, union: UnionConvention | None = None) -> Tensor:
        """float64 (U, C) IoU; 0 where the union is empty and in column 0 (unlabelled)."""
        u = self.union_counts(union)
        out = torch.where(u > 0, self.intersection.double() / u.clamp_min(1).double(), 0.0)
        out[:, 0] = 0.0
        return out

    def best(self, union: UnionConvention | None = None) -> tuple[Tensor, Tensor]:
        """(concept id int64 (U,), IoU float64 (U,)) of each unit's best concept (ids ≥ 1)."""
        iou = self.iou(union)[:, 1:]
        idx = iou.argmax(1)  # the first maximal value on ties → lowest id
        return idx + 1, iou.gather(1, idx[:, None])[:, 0]

    def table(self) -> pd.DataFrame:
        """One row per unit: unit, concept, concept_id, category, iou, detector, threshold."""
        ids, val = self.best()
        ids_l = ids.tolist()
        return pd.DataFrame(
            {
                "unit": np.arange(self.n_units, dtype=np.int64),
                "concept": [self.concept_names[i] for i in ids_l],
                "concept_id": ids.numpy().astype(np.int64),
                "category": [self.concept_categories[i] for i in ids_l],
                "iou": val.numpy(),
                "detector": (val > self.iou_threshold).numpy(),
                "threshold": self.thresholds.numpy(),
            }
        )

    def detectors(self) -> pd.DataFrame:
        """The rows of `table` whose unit is a detector (IoU > ``iou_threshold``)."""
        t = self.table()
        return t[t["detector"]].reset_index(drop=True)

    def unique_concepts(self) -> dict[str, list[str]]:
        """Category → sorted distinct best-concept names of detector units (every category of
        ``CONCEPT_CATEGORIES`` present, then any other category)."""
        det = self.detectors()
        cats = list(CONCEPT_CATEGORIES) + sorted(
            {g for g in self.concept_categories[1:] if g not in CONCEPT_CATEGORIES}
        )
        return {g: sorted(set(det.loc[det["category"] == g, "concept"])) for g in cats}

    def unique_concepts_per_category(self) -> dict[str, int]:
        """Category → number of distinct concepts detected by at least one detector unit."""
        return {g: len(v) for g, v in self.unique_concepts().items()}

    def summary(self) -> dict[str, Any]:
        """Layer, settings, unit and detector counts, and unique concepts per category."""
        det = self.detectors()
        return {
            "layer": self.layer,
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "union": self.union,
            "units": self.n_units,
            "detectors": int(len(det)),
            "unique_concepts": int(det["concept_id"].nunique()),
            "unique_per_category": self.unique_concepts_per_category(),
        }


# ----------------------------------------------------------------------------- helpers


def _check_union(union: str) -> UnionConvention:
    if union not in _UNIONS:
        raise AuglensError(f"union must be one of {', '.join(_UNIONS)}; got {union!r}")
    return union  # type: ignore[return-value]


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


class _StopForward(Exception):
    """Raised by the layer hook to skip the rest of the network once the activations are taken."""


class _LayerTap:
    """Runs the model on normalised batches and returns the target layer's output (B, U, h, w)
    (a transformer's token output as its patch grid, `feature_grid`)."""

    def __init__(self, model: nn.Module, layer: str, stop_early: bool) -> None:
        self.model = model
        self.module = get_module(model, layer)
        self.layer = layer
        self.stop_early = stop_early
        self.out: Tensor | None = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.out is None:  # first call of a module that runs several times
            if not isinstance(output, Tensor):
                raise AuglensError(
                    f"layer '{self.layer}' returns {type(output).__name__}, not a tensor"
                )
            # without an early stop, later in-place ops (e.g. ``out += x``) could change it
            self.out = output if self.stop_early else output.detach().clone()
        if self.stop_early:
            raise _StopForward

    def __call__(self, x: Tensor) -> Tensor:
        self.out = None
        try:
            with LayerTap(self.module, self._hook):
                self.model(x)
        except _StopForward:
            pass
        out = self.out
        self.out = None
        if out is None:
            raise AuglensError(f"layer '{self.layer}' was not called by the model's forward")
        if out.ndim == 3 and token_grid(self.model) is not None:
            out = feature_grid(self.model, out, self.layer)  # a ViT's tokens: units = channels
        if out.ndim != 4:
            raise AuglensError(
                f"layer '{self.layer}' output must be (B, units, h, w), got {tuple(out.shape)}"
            )
        out = out.detach().float()
        if not bool(torch.isfinite(out).all()):
            raise AuglensError(f"layer '{self.layer}' activations contain NaN or inf")
        return out


def _check_inputs(
    images: Tensor,
    concepts: Tensor,
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
    quantile: float,
    iou_threshold: float,
    batch_size: int,
) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.dtype != torch.uint8:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else images
        raise AuglensError(f"dissect expects uint8 images (N, 3, H, W), got {desc}")
    if (
        not isinstance(concepts, Tensor)
        or concepts.ndim != 4
        or concepts.is_floating_point()
        or concepts.dtype == torch.bool
    ):
        desc = (
            f"{concepts.dtype} {tuple(concepts.shape)}"
            if isinstance(concepts, Tensor)
            else concepts
        )
        raise AuglensError(f"dissect expects integer concepts (N, layers, H, W), got {desc}")
    n = images.shape[0]
    if n == 0 or concepts.shape[0] != n:
        raise AuglensError(
            f"need the same non-zero number of images and concept maps, got {n} and "
            f"{concepts.shape[0]}"
        )
    c = len(concept_names)
    if c < 2 or len(concept_categories) != c:
        raise AuglensError(
            f"need concept_names and concept_categories for every global id incl. 0 "
            f"(unlabelled) and at least one concept; got {c} names, "
            f"{len(concept_categories)} categories"
        )
    lo, hi = int(concepts.min()), int(concepts.max())
    if lo < 0 or hi >= c:
        raise AuglensError(f"concept ids must be in [0, {c - 1}], got values in [{lo}, {hi}]")
    for what, v in (("quantile", quantile), ("iou_threshold", iou_threshold)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            raise AuglensError(f"{what} must be a number in [0, 1], got {v!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AuglensError(f"batch_size must be an integer >= 1, got {batch_size!r}")


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


# ----------------------------------------------------------------------------- dissect


def dissect(
    model: nn.Module,
    images: Tensor,
    concepts: Tensor,
    normalize: Callable[[Tensor], Tensor],
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
    layer: str | None = None,
    batch_size: int = 256,
    iou_threshold: float = 0.04,
    quantile: float = 0.995,
    *,
    union: UnionConvention = "category",
    activation_cache_bytes: int = 1 << 30,
    chunk_elems: int = 1 << 23,
    stop_early: bool = True,
    channels_last: bool | None = None,
) -> DissectionResult:
    """Network Dissection of ``layer`` (None: the model's default target layer) on a probe set.

    images uint8 (N, 3, H, W) → ``normalize(images / 255)`` → model (eval mode, no grad, the
    model's device; state, flags and hooks restored afterwards, also on errors). concepts integer
    (N, L, H', W') global concept ids (0 = unlabelled), labels at resolution H'×W';
    ``concept_names[i]`` / ``concept_categories[i]`` describe id i. Two streamed passes of
    ``batch_size`` images; pass 1 keeps the activations for pass 2 if they take at most
    ``activation_cache_bytes`` (else a second forward). ``chunk_elems`` bounds the upsampled
    elements held at once. ``stop_early`` ends each forward at ``layer`` (its first call).
    ``channels_last`` (None: on CPU) feeds channels-last input (faster with oneDNN).
    """
    _check_inputs(
        images, concepts, concept_names, concept_categories, quantile, iou_threshold, batch_size
    )
    union = _check_union(union)
    layer = default_target_layer(model) if layer is None else layer
    names, cats = list(concept_names), list(concept_categories)
    categories = [g for g in CONCEPT_CATEGORIES if g in cats[1:]]
    categories += sorted({g for g in cats[1:] if g not in categories})
    device = model_device(model)
    dtype = model_dtype(model)
    use_cl = device.type == "cpu" if channels_last is None else channels_last
    tap = _LayerTap(model, layer, stop_early)
    n = images.shape[0]
    label_size = (int(concepts.shape[-2]), int(concepts.shape[-1]))

    def forward(sl: slice) -> Tensor:
        x = normalize(images[sl].to(device, non_blocking=True).to(dtype).div_(255))
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        return tap(x)

    t0, c0 = time.perf_counter(), time.process_time()
    with preserved_state(model), torch.inference_mode():
        cached: list[Tensor] | None = []
        top: Tensor | None = None
        m = n_units = 0
        feat: tuple[int, int] = (0, 0)
        for start in range(0, n, batch_size):
            a = forward(slice(start, start + batch_size))
            if top is None:
                n_units, feat = a.shape[1], (a.shape[2], a.shape[3])
                total = n * feat[0] * feat[1]
                m = tail_size(total, quantile)
                if n * n_units * feat[0] * feat[1] * 4 > activation_cache_bytes:
                    cached = None
                top = a.new_empty(n_units, 0)
            elif a.shape[1:] != (n_units, *feat):
                raise AuglensError(
                    f"layer '{layer}' output shape changed between batches: "
                    f"{tuple(a.shape[1:])} vs {(n_units, *feat)}"
                )
            vals = torch.cat([top, a.transpose(0, 1).reshape(n_units, -1)], 1)
            top = vals.topk(m, 1, sorted=False).values if vals.shape[1] > m else vals
            if cached is not None:
                cached.append(a)
        assert top is not None
        thresholds = quantile_from_tail(top, n * feat[0] * feat[1], quantile).cpu()
        t32 = float32_floor(thresholds)
        t1, c1 = time.perf_counter(), time.process_time()

        pairs = _overlapping_layers(concepts, len(names))
        counter = _Counter(t32, cats, categories, label_size, pairs, device, chunk_elems)
        for i, start in enumerate(range(0, n, batch_size)):
            sl = slice(start, start + batch_size)
            a = cached[i] if cached is not None else forward(sl)
            counter.add(a, concepts[sl])
            if cached is not None:
                cached[i] = a.new_empty(0)  # free as we go
    t2, c2 = time.perf_counter(), time.process_time()
    info = {
        "version": DISSECTION_VERSION,
        "n_images": n,
        "n_units": n_units,
        "feature_size": list(feat),
        "label_size": list(label_size),
        "forward_passes": 1 if cached is not None else 2,
        "activations_cached": cached is not None,
        "active_map_fraction": counter.n_active / max(counter.n_maps, 1),
        "seconds_pass1": t1 - t0,
        "seconds_pass2": t2 - t1,
        "cpu_seconds_pass1": c1 - c0,
        "cpu_seconds_pass2": c2 - c1,
        "batch_size": batch_size,
        "device": str(device),
    }
    inter = counter.inter.view(n_units, len(names)).cpu().clone()  # clone: no inference tensors
    inter[:, 0] = 0
    return DissectionResult(
        layer=layer,
        quantile=float(quantile),
        iou_threshold=float(iou_threshold),
        union=union,
        thresholds=thresholds.clone(),
        intersection=inter,
        label_pixels=counter.label_px.cpu().clone(),
        unit_pixels=counter.unit_px.cpu().clone(),
        unit_pixels_by_category=counter.unit_cat.cpu().clone(),
        unit_pixels_touching=counter.unit_touch.cpu().clone(),
        concept_names=names,
        concept_categories=cats,
        categories=categories,
        info=info,
    )


# ----------------------------------------------------------------------------- caching


def probe_fingerprint(
    images: Tensor,
    concepts: Tensor,
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
) -> str:
    """sha256 of the probe images and concept maps (bytes, shapes, dtypes) and the concept names
    and categories."""
    h = hashlib.sha256()
    for t in (images, concepts):
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(memoryview(arr).cast("B"))
    h.update(json.dumps([list(concept_names), list(concept_categories)]).encode())
    return h.hexdigest()


def normalize_fingerprint(normalize: Callable[[Tensor], Tensor]) -> str:
    """sha256 of ``normalize`` applied to a fixed (1, 3, 8, 8) ramp in [0, 1] (captures any
    per-channel affine normalisation)."""
    x = torch.linspace(0.0, 1.0, 3 * 64).view(1, 3, 8, 8)
    with torch.no_grad():
        out = normalize(x.clone()).detach().cpu().double().numpy()
    return hashlib.sha256(out.tobytes() + str(out.shape).encode()).hexdigest()


def dissection_cache_key(
    checkpoint_sha256: str,
    layer: str,
    quantile: float,
    iou_threshold: float,
    probe: str,
    normalize: str,
) -> str:
    """sha256 of everything a cached dissection depends on (``probe``, ``normalize``: the
    fingerprints or caller-given keys); the checkpoint enters by content hash only. The union
    convention is not part of it: every result holds the counts of all conventions."""
    parts = {
        "version": DISSECTION_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "layer": layer,
        "quantile": float(quantile),
        "iou_threshold": float(iou_threshold),
        "probe": probe,
        "normalize": normalize,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _check_weights(model: nn.Module, path: Path) -> None:
    state = read_state_dict(path)
    own = model.state_dict()
    same = set(state) == set(own) and all(
        state[k].shape == v.shape and torch.equal(state[k], v.detach().cpu())
        for k, v in own.items()
    )
    if not same:
        raise AuglensError(
            f"the model's weights differ from checkpoint {path}; load it first "
            "(the cache is keyed by the checkpoint file)"
        )


def save_dissection(result: DissectionResult, path: str | Path, key: str = "") -> Path:
    """Write ``result`` as one parquet file (one row per unit, metadata in the schema),
    atomically (temp file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def matrix(t: Tensor) -> pa.FixedSizeListArray:
        return pa.FixedSizeListArray.from_arrays(pa.array(t.numpy().reshape(-1)), t.shape[1])

    meta = {
        "key": key,
        "layer": result.layer,
        "quantile": result.quantile,
        "iou_threshold": result.iou_threshold,
        "union": result.union,
        "label_pixels": result.label_pixels.tolist(),
        "concept_names": result.concept_names,
        "concept_categories": result.concept_categories,
        "categories": result.categories,
        "info": result.info,
    }
    table = pa.table(
        {
            "unit": pa.array(np.arange(result.n_units, dtype=np.int64)),
            "threshold": pa.array(result.thresholds.numpy()),
            "unit_pixels": pa.array(result.unit_pixels.numpy()),
            "intersection": matrix(result.intersection),
            "unit_pixels_by_category": matrix(result.unit_pixels_by_category),
            "unit_pixels_touching": matrix(result.unit_pixels_touching),
        }
    ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def load_dissection(path: str | Path) -> tuple[DissectionResult, str]:
    """(result, stored key) from a file written by `save_dissection`."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[_META_KEY])
        u = table.num_rows

        def matrix(name: str) -> Tensor:
            flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            return torch.from_numpy(flat.astype(np.int64).reshape(u, -1))

        result = DissectionResult(
            layer=meta["layer"],
            quantile=meta["quantile"],
            iou_threshold=meta["iou_threshold"],
            union=meta["union"],
            thresholds=torch.from_numpy(table.column("threshold").to_numpy().astype(np.float64)),
            intersection=matrix("intersection"),
            label_pixels=torch.tensor(meta["label_pixels"], dtype=torch.long),
            unit_pixels=torch.from_numpy(table.column("unit_pixels").to_numpy().astype(np.int64)),
            unit_pixels_by_category=matrix("unit_pixels_by_category"),
            unit_pixels_touching=matrix("unit_pixels_touching"),
            concept_names=list(meta["concept_names"]),
            concept_categories=list(meta["concept_categories"]),
            categories=list(meta["categories"]),
            info=dict(meta["info"]),
        )
    except Exception as e:
        raise AuglensError(f"corrupt dissection file {path}: {e}") from e
    return result, str(meta.get("key", ""))


def dissect_cached(
    model: nn.Module,
    images: Tensor,
    concepts: Tensor,
    normalize: Callable[[Tensor], Tensor],
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
    *,
    checkpoint_path: str | Path,
    cache_dir: str | Path,
    layer: str | None = None,
    probe_key: str | None = None,
    verify_weights: bool = True,
    batch_size: int = 256,
    iou_threshold: float = 0.04,
    quantile: float = 0.995,
    union: UnionConvention = "category",
    **options: Any,
) -> DissectionResult:
    """`dissect` with a cache in ``cache_dir/dissection-<key>.parquet``.

    The key (`dissection_cache_key`) uses the sha256 of the file at ``checkpoint_path`` (the
    weights ``model`` holds; checked on a miss if ``verify_weights``), the layer, quantile, IoU
    threshold, ``probe_key`` (None: `probe_fingerprint`; a caller key must identify images,
    labels and concept names) and `normalize_fingerprint`; never the architecture name. A hit
    returns the stored counts with ``union`` as asked. ``info["cache"]`` is "hit" or "miss"; a
    corrupt file is recomputed. Options such as ``batch_size`` are not in the key (they change
    activations at most by float rounding).
    """
    ckpt = Path(checkpoint_path)
    if not ckpt.is_file():
        raise AuglensError(f"checkpoint not found: {ckpt}")
    layer = default_target_layer(model) if layer is None else layer
    _check_union(union)
    probe = probe_key or probe_fingerprint(images, concepts, concept_names, concept_categories)
    sha = file_sha256(ckpt)
    key = dissection_cache_key(
        sha, layer, quantile, iou_threshold, probe, normalize_fingerprint(normalize)
    )
    path = Path(cache_dir) / f"dissection-{key}.parquet"
    if path.is_file():
        try:
            result, stored = load_dissection(path)
        except AuglensError as e:
            warnings.warn(f"{e}; recomputing", stacklevel=2)
        else:
            if stored == key:
                result.union = union
                result.info.update(cache="hit", cache_key=key, cache_file=str(path))
                return result
    if verify_weights:
        _check_weights(model, ckpt)
    result = dissect(
        model, images, concepts, normalize, concept_names, concept_categories, layer,
        batch_size, iou_threshold, quantile, union=union, **options,
    )  # fmt: skip
    result.info.update(checkpoint_sha256=sha, probe=probe)
    save_dissection(result, path, key)
    result.info.update(cache="miss", cache_key=key, cache_file=str(path))
    return result
