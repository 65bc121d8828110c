"""`MapContext`: one validated batch of pairs and the intermediates its metrics share."""

from __future__ import annotations

from functools import cached_property
from typing import Literal

import torch
from torch import Tensor

from ...errors import AuglensError
from .maps import _Maps, _minmax_rows, _validate_maps
from .ranking import _sort_desc

EmdBackend = Literal["auto", "pot", "linprog"]
LogitsKind = Literal["logits", "probs"]


class MapContext:
    """One validated batch of map pairs plus lazily computed intermediates shared between metrics.

    ``a``: other model's maps, ``b``: baseline maps, (N, h, w) or (N, n). Each intermediate
    (min-max normalisation, one stable descending sort per map, positions in b's order) is computed
    at most once, whichever metrics ask for it. Optional ``a_logits``/``b_logits`` (N, K) feed
    ``class_kld``. Register a new metric as ``METRICS.register("name")(fn)``, ``fn(ctx) -> (N,)``.
    """

    def __init__(
        self,
        a: Tensor,
        b: Tensor,
        *,
        a_logits: Tensor | None = None,
        b_logits: Tensor | None = None,
        logits_kind: LogitsKind = "logits",
        emd_backend: EmdBackend = "auto",
    ) -> None:
        self._setup(_validate_maps(a, b), a_logits, b_logits, logits_kind, emd_backend)

    @classmethod
    def _checked(
        cls,
        maps: _Maps,
        a_logits: Tensor | None,
        b_logits: Tensor | None,
        logits_kind: LogitsKind,
        emd_backend: EmdBackend,
    ) -> MapContext:
        """A context on an already validated batch (no second pass over the data)."""
        self = cls.__new__(cls)
        self._setup(maps, a_logits, b_logits, logits_kind, emd_backend)
        return self

    def _setup(
        self,
        maps: _Maps,
        a_logits: Tensor | None,
        b_logits: Tensor | None,
        logits_kind: LogitsKind,
        emd_backend: EmdBackend,
    ) -> None:
        self.maps = maps
        self.a, self.b, self.spatial = maps.a, maps.b, maps.spatial
        self.n_pairs, self.n_pixels = self.a.shape
        self.device = self.a.device
        self.a_logits, self.b_logits = a_logits, b_logits
        self.logits_kind: LogitsKind = logits_kind
        self.emd_backend: EmdBackend = emd_backend

    # -- normalisation
    @cached_property
    def norm_a(self) -> Tensor:
        """float64 (N, n): ``a`` min-max normalised per map (constant map → zeros)."""
        return _minmax_rows(self.a, self.maps.lo_a, self.maps.hi_a)

    @cached_property
    def norm_b(self) -> Tensor:
        """float64 (N, n): ``b`` min-max normalised per map (constant map → zeros)."""
        return _minmax_rows(self.b, self.maps.lo_b, self.maps.hi_b)

    @cached_property
    def norm_diff(self) -> Tensor:
        """float64 (N, n): ``norm_a − norm_b``."""
        return self.norm_a - self.norm_b

    @cached_property
    def constant(self) -> Tensor:
        """bool (N,): either map of the pair is constant."""
        m = self.maps
        return (m.lo_a == m.hi_a) | (m.lo_b == m.hi_b)

    # -- one sort per map
    @cached_property
    def sorted_a(self) -> tuple[Tensor, Tensor]:
        """(tie keys, pixel indices) of ``a`` in descending order, ties → lower index first."""
        return _sort_desc(self.a, bool((self.maps.lo_a >= 0).all()))

    @cached_property
    def sorted_b(self) -> tuple[Tensor, Tensor]:
        """(tie keys, pixel indices) of ``b`` in descending order, ties → lower index first."""
        return _sort_desc(self.b, bool((self.maps.lo_b >= 0).all()))

    @cached_property
    def b_pos_of_a(self) -> Tensor:
        """int64 (N, n): entry j = position in b's order of the pixel at position j in a's order."""
        si_b = self.sorted_b[1]
        pos = torch.arange(self.n_pixels, device=self.device).expand_as(si_b)
        pos_b = torch.empty_like(si_b).scatter_(1, si_b, pos)  # pixel → position in b's order
        return pos_b.gather(1, self.sorted_a[1])

    def intersection(self, k: int) -> Tensor:
        """int64 (N,): |T(a) ∩ T(b)| for the top-``k`` sets."""
        if self.n_pairs == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return (self.b_pos_of_a[:, :k] < k).sum(1)

    # -- class distributions
    def logits(self) -> tuple[Tensor, Tensor]:
        if self.a_logits is None or self.b_logits is None:
            raise AuglensError(
                "metric 'class_kld' needs the class logits of both models: pass a_logits and "
                "b_logits (N, K)"
            )
        return self.a_logits, self.b_logits
