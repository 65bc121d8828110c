"""The result of one dissection: per-unit thresholds, exact counts, IoU under each union
convention, detectors and unique concepts (conventions: `auglens.metrics.dissection`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ...data.base import CONCEPT_CATEGORIES
from ...errors import AuglensError

#: Bump when results for the same inputs change (invalidates caches).
DISSECTION_VERSION = 1
UnionConvention = Literal["category", "all", "netdissect"]
_UNIONS = ("category", "all", "netdissect")
_META_KEY = b"auglens.dissection"
_F32_EPS = float(torch.finfo(torch.float32).eps)



def _check_union(union: str) -> UnionConvention:
    if union not in _UNIONS:
        raise AuglensError(f"union must be one of {', '.join(_UNIONS)}; got {union!r}")
    return union  # type: ignore[return-value]



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


