"""RISE: randomized input sampling for explanation (Petsiuk et al., BMVC 2018).

Follows ``eclique/RISE`` (``explanations.py``, class ``RISE``):

- **Masks.** N binary grids (s × s), each cell 1 with probability p; cell size
  c = ⌈H/s⌉ × ⌈W/s⌉; each grid is upsampled bilinearly to (s + 1)·c and cropped to H × W at a
  random shift (δy, δx) ∈ [0, c_h) × [0, c_w). The reference upsamples with
  ``skimage.transform.resize(order=1, mode='reflect', anti_aliasing=False)``: bilinear
  interpolation with half-pixel centres (source coordinate (i + ½)·s/size − ½) and, within half a
  source pixel of the border, the grid mirrored *without* repeating its edge cell (skimage's
  'reflect' = scipy.ndimage's 'mirror'; ``F.interpolate(align_corners=False)`` would repeat the
  edge instead). Computed here the same way, separably, in float64 (checked against skimage in
  the tests, ≤ 1e-6).
- **Score** = softmax probability of the explained class (the reference wraps the model in
  ``nn.Softmax``) for the masked input ``mask · x`` in the model's (normalised) input space, so
  masked pixels become 0 = the dataset mean.
- **Saliency** (``Explanation.maps``, float32 (B, H, W) at **input** resolution, ≥ 0):
  Σ_n score_n · mask_n / (N · p) (the reference's ``RISE.forward``; its ``RISEBatch`` omits the
  division).
- **Defaults** N = 6000, s = 8, p = 0.1: the reference's ``Saliency.ipynb`` (ImageNet, 224 × 224).

Seeding (not in the reference, which draws from numpy's global RNG): the grids and shifts come
from a CPU ``torch.Generator`` seeded with ``seed`` — ``torch.rand(N, s, s) < p``, then
``torch.rand(N, 2, dtype=float64)`` scaled by the cell size and floored for the shifts. The masks
depend only on (seed, N, s, p, H, W): every model explained with the same seed sees the same
masks, and an image's map does not depend on its batch. Masks are built on the CPU (bit-identical
on every device) chunk by chunk and kept in memory while they take ≤ ``cache_mb``.

Batching (not in the reference, which runs one image at a time): every forward holds
``max_batch`` masked inputs (images × masks); sums are accumulated in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AuglensError
from .base import Explainer, register_explainer, resolve_targets


def _taps(n_in: int, n_out: int, dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps for output positions ``dst`` of an ``n_in`` → ``n_out`` upsampling with
    half-pixel centres: indices into the input padded by one mirrored cell on each side, and the
    weight of the second tap."""
    src = (dst.double() + 0.5) * (n_in / n_out) - 0.5
    lo = src.floor()
    return lo.long() + 1, lo.long() + 2, src - lo


@register_explainer("rise")
class RISE(Explainer):
    """RISE (Petsiuk et al. 2018): Σ_masks p(class | mask·x) · mask / (N·p), input resolution."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        n_masks: int = 6000,
        grid_size: int = 8,
        p: float = 0.1,
        seed: int = 0,
        max_batch: int = 256,
        cache_mb: float = 512.0,
        channels_last: bool | None = None,
    ) -> None:
        """``target_layer`` is ignored (RISE perturbs the input; maps are at input resolution and
        ``Explanation.layer`` is ``"input"``)."""
        if isinstance(n_masks, bool) or not isinstance(n_masks, int) or n_masks < 1:
            raise AuglensError(f"rise n_masks must be an integer >= 1, got {n_masks!r}")
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
            raise AuglensError(f"rise grid_size must be an integer >= 1, got {grid_size!r}")
        if not 0 < p <= 1:
            raise AuglensError(f"rise p must be in (0, 1], got {p!r}")
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise AuglensError(f"rise max_batch must be an integer >= 1, got {max_batch!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise AuglensError(f"rise seed must be a non-negative integer, got {seed!r}")
        self.model = model
        self.layer_name = "input"
        self.layer = None  # type: ignore[assignment]
        self.channels_last = channels_last
        self.n_masks, self.grid_size, self.p, self.seed = n_masks, grid_size, float(p), seed
        self.max_batch = max_batch
        self.cache_mb = cache_mb
        g = torch.Generator().manual_seed(seed)
        #: bool (N, s, s): the binary grids
        self.grids = torch.rand(n_masks, grid_size, grid_size, generator=g) < p
        #: float64 (N, 2) in [0, 1): shift = ⌊fraction · cell size⌋ (rows, columns)
        self.shift_fractions = torch.rand(n_masks, 2, generator=g, dtype=torch.float64)
        self._cache: dict[tuple[int, int], Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"RISE({type(self.model).__name__}, n_masks={self.n_masks}, "
            f"grid_size={self.grid_size}, p={self.p}, seed={self.seed})"
        )

    def shifts(self, height: int, width: int) -> Tensor:
        """int64 (N, 2): the crop offsets (rows, columns) of every mask for H × W inputs."""
        cell = torch.tensor([math.ceil(height / self.grid_size), math.ceil(width / self.grid_size)])
        return (self.shift_fractions * cell).floor().long()

    def masks(self, height: int, width: int, start: int = 0, stop: int | None = None) -> Tensor:
        """float32 (stop − start, H, W) on the CPU: masks ``start…stop − 1`` for H × W inputs."""
        stop = self.n_masks if stop is None else stop
        full = self._cache.get((height, width))
        if full is not None:
            return full[start:stop]
        s, m = self.grid_size, stop - start
        ch, cw = math.ceil(height / s), math.ceil(width / s)
        grids = self.grids[start:stop, None].double()
        g = F.pad(grids, (1, 1, 1, 1), mode="reflect" if s > 1 else "replicate")[:, 0]
        off = self.shifts(height, width)[start:stop]
        y0, y1, fy = _taps(s, (s + 1) * ch, off[:, 0, None] + torch.arange(height))  # (m, H)
        x0, x1, fx = _taps(s, (s + 1) * cw, off[:, 1, None] + torch.arange(width))  # (m, W)
        n = torch.arange(m)[:, None]
        rows = g[n, y0] * (1 - fy)[..., None] + g[n, y1] * fy[..., None]  # (m, H, s + 2)
        shape = (m, height, width)
        out = rows.gather(2, x0[:, None].expand(shape)) * (1 - fx)[:, None] + rows.gather(
            2, x1[:, None].expand(shape)
        ) * fx[:, None]
        out = out.float()
        if start == 0 and stop == self.n_masks and out.numel() * 4 <= self.cache_mb * 2**20:
            self._cache[(height, width)] = out
        return out

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        b, c, h, w = x.shape
        on_device = None
        if h * w * self.n_masks * 4 <= self.cache_mb * 2**20:  # cached: one transfer per call
            on_device = self.masks(h, w).to(device=x.device, dtype=x.dtype)
        nhwc = c > 1 and x.is_contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            logits = self.model(x)
            targets = resolve_targets(logits, target)
            gt = None if target_gt is None else resolve_targets(logits, target_gt, "ground-truth")
            classes = targets[:, None] if gt is None else torch.stack([targets, gt], 1)
            sal = torch.zeros(b, classes.shape[1], h * w, dtype=torch.float64, device=x.device)
            bi = min(b, self.max_batch)
            per = max(1, self.max_batch // bi)
            src = x.permute(0, 2, 3, 1) if nhwc else x  # NHWC view of channels-last memory
            for i0 in range(0, b, bi):
                xi, ci = src[i0 : i0 + bi], classes[i0 : i0 + bi]
                nb = xi.shape[0]
                for m0 in range(0, self.n_masks, per):
                    m1 = min(m0 + per, self.n_masks)
                    mk = (
                        on_device[m0:m1]
                        if on_device is not None
                        else self.masks(h, w, m0, m1).to(device=x.device, dtype=x.dtype)
                    )
                    if nhwc:
                        stack = (xi[:, None] * mk[None, :, :, :, None]).reshape(-1, h, w, c)
                        stack = stack.permute(0, 3, 1, 2)
                    else:
                        stack = (xi[:, None] * mk[None, :, None]).reshape(-1, c, h, w)
                    out = self.model(stack)
                    logp = F.log_softmax(out.double(), 1).view(nb, m1 - m0, -1)
                    idx = ci[:, None, :].expand(nb, m1 - m0, ci.shape[1])
                    prob = logp.gather(2, idx).exp()  # (nb, m, targets)
                    sal[i0 : i0 + nb] += torch.einsum(
                        "bmk,mp->bkp", prob, mk.reshape(m1 - m0, -1).double()
                    )
        sal = (sal / (self.n_masks * self.p)).view(b, -1, h, w).float()
        return sal[:, 0], logits, targets, (None if gt is None else sal[:, 1])
