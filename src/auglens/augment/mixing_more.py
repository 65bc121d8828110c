"""More mixed-sample augmentations: ResizeMix (Qin et al. 2020) and FMix (Harris et al. 2020),
per sample, with the same conventions as ``mixing`` (partner = a random permutation, λ = the exact
share of the sample's own image, ``label_mixing`` True/False, logs ``lam``, ``box``, ``partner``,
``applied``; not applied: bit-identical, lam 1, box 0, partner = itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._util import as_bool, as_float, as_range, uniform
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .mixing import _BetaMix, box_masks, mix_targets

# ---------------------------------------------------------------- resizemix


def resize_weights(
    start: Tensor, length: Tensor, size: int, antialias: bool, dtype: torch.dtype = torch.float64
) -> Tensor:
    """(B, size, size) matrices R with (R @ v)[start + i] = the i-th of ``length`` outputs of
    ``F.interpolate(v, length, mode="bilinear", align_corners=False, antialias=antialias)`` along
    one axis, and zero rows outside [start, start + length). ``length`` <= ``size`` (downscaling;
    PyTorch's antialias filter: triangle of support = in/out, weights normalised per output)."""
    b = start.shape[0]
    r = torch.arange(size, dtype=torch.float64)
    i = r[None, :] - start[:, None].double()  # output index within the patch, (B, size)
    valid = (i >= 0) & (i < length[:, None])
    n_out = length.clamp_min(1)[:, None].double()
    scale = size / n_out  # in / out >= 1
    j = r.view(1, 1, size)  # source index
    if antialias:
        center = (scale * (i + 0.5))[..., None]
        support = scale[..., None]
        xmin = torch.clamp(torch.trunc(center - support + 0.5), min=0)
        xmax = torch.clamp(torch.trunc(center + support + 0.5), max=size)
        wgt = (1.0 - ((j - center + 0.5) / support).abs()).clamp_min(0.0)
        wgt = torch.where((j >= xmin) & (j < xmax), wgt, 0.0)
        wgt = wgt / wgt.sum(-1, keepdim=True).clamp_min(1e-300)
    else:
        src = (scale * (i + 0.5) - 0.5).clamp_min(0.0)[..., None]
        i0 = torch.floor(src)
        i1 = torch.where(i0 < size - 1, i0 + 1, i0)
        l1 = src - i0
        wgt = torch.where(j == i0, 1.0 - l1, 0.0) + torch.where(j == i1, l1, 0.0)
    wgt = torch.where(valid[..., None], wgt, 0.0)
    return wgt.view(b, size, size).to(dtype)


@AUGMENTATIONS.register("resizemix")
class ResizeMix(Augmentation):
    """ResizeMix (Qin et al. 2020, arXiv 2012.11101) with a per-sample scale, position, partner.

    τ ~ U(``scale``) (paper: U(0.1, 0.8)); the partner image (a random permutation of the batch)
    is resized as a whole to (⌊τH⌋, ⌊τW⌋) (bilinear, ``align_corners=False``, ``antialias`` as
    torchvision's ``Resize``; mmpretrain's port uses no antialias) and pasted at a uniform integer
    position entirely inside the image. λ = 1 - ⌊τH⌋⌊τW⌋ / (HW), the exact share of the
    sample's own image; targets per ``label_mixing`` (λ·t + (1-λ)·t[partner], else the larger
    share's). A sample paired with itself gets a resized copy of itself pasted (label unchanged).
    Log: ``lam``, ``box`` (x1, y1, x2, y2, exclusive), ``partner``, ``applied``.
    """

    name = "resizemix"
    mixes_labels = True

    def __init__(
        self,
        scale: tuple[float, float] = (0.1, 0.8),
        label_mixing: bool = True,
        antialias: bool = True,
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.scale = as_range("scale", scale, 0.0, 1.0)
        self.label_mixing = as_bool("label_mixing", label_mixing)
        self.antialias = as_bool("antialias", antialias)

    def draw(self, b: int, height: int, width: int, generator: torch.Generator) -> AugLog:
        """Per-sample partner, τ and box (drawn in this order, after the apply mask)."""
        perm = torch.randperm(b, generator=generator)
        tau = uniform(b, *self.scale, generator)
        ph = torch.floor(tau * height).long()
        pw = torch.floor(tau * width).long()
        top = torch.floor(uniform(b, 0, 1, generator) * (height - ph + 1)).long()
        left = torch.floor(uniform(b, 0, 1, generator) * (width - pw + 1)).long()
        top, left = torch.minimum(top, height - ph), torch.minimum(left, width - pw)
        box = torch.stack([left, top, left + pw, top + ph], dim=1)
        return {"partner": perm, "tau": tau, "box": box}

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask, prm = self.draw_masked(images, generator)
        boxes = torch.where(mask[:, None], prm["box"], 0)
        partner = torch.where(mask, prm["partner"], torch.arange(b))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        lam = 1.0 - area.double() / (h * w)
        log = {"lam": lam.float(), "box": boxes, "partner": partner, "applied": mask}
        if not bool(mask.any()):
            return images, targets, log
        dev, dt = images.device, images.dtype
        ry = resize_weights(boxes[:, 1], boxes[:, 3] - boxes[:, 1], h, self.antialias, dt)
        rx = resize_weights(boxes[:, 0], boxes[:, 2] - boxes[:, 0], w, self.antialias, dt)
        src = images.index_select(0, partner.to(dev))
        pasted = ry.to(dev)[:, None] @ src @ rx.to(dev)[:, None].transpose(-1, -2)
        region = box_masks(boxes, h, w, dev)
        out = torch.where(region, pasted, images)
        return out, mix_targets(targets, partner, lam, mask, self.label_mixing), log


# ---------------------------------------------------------------- fmix


def fmix_freqs(height: int, width: int) -> Tensor:
    """float64 (H, W') radial frequencies of the authors' ``fftfreqnd(h, w)``: W' = W//2 + 1 (+1
    more for odd W, as their code)."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    wf = width // 2 + (2 if width % 2 == 1 else 1)
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[:wf]
    return torch.sqrt(fx * fx + fy * fy)


def fmix_low_freq(
    param: Tensor, decay_power: float, height: int, width: int, spectrum: str
) -> Tensor:
    """(B, H, W) low-frequency images (before the min-max scaling, which keeps the order) from
    Gaussian draws ``param``: (B, H, W', 2) for ``spectrum="paper"``, (B, 2, W', 2) for
    ``"code"``. Scale 1 / max(f, 1/max(H, W))^decay_power (authors' ``get_spectrum``).

    "paper": the complex spectrum Z = scale·(param[..., 0] + i·param[..., 1]) over the
    (H, W') half-plane, image = irfft2(Z) (the paper's definition). "code": the authors' released
    ``make_low_freq_image`` (``ecs-vlc/FMix`` ``fmix.py``), which builds the complex array from
    ``spectrum[:, 0] + 1j * spectrum[:, 1]`` — rows 0 and 1 of the (1, H, W', 2) spectrum — so the
    result is the (W', 2) array Z[j, k] = scale[0, j]·p[0, j, k] + i·scale[1, j]·p[1, j, k]
    placed at frequencies (ky = j, kx = k): only kx ∈ {0, 1} and ky ∈ [0, W') are non-zero.
    """
    scale = 1.0 / fmix_freqs(height, width).clamp_min(1.0 / max(width, height)) ** decay_power
    wf = scale.shape[1]
    kx = width // 2 + 1
    b = param.shape[0]
    if spectrum == "paper":
        z = torch.complex(scale * param[..., 0], scale * param[..., 1])[..., :kx]
    else:
        re = scale[0, :, None] * param[:, 0]  # (B, W', 2) -> rows ky = j, columns kx = k
        im = scale[1, :, None] * param[:, 1]
        zs = torch.complex(re, im)
        z = torch.zeros(b, height, kx, dtype=zs.dtype, device=param.device)
        ny, nx = min(wf, height), min(2, kx)
        z[:, :ny, :nx] = zs[:, :ny, :nx]
    return torch.fft.irfftn(z, s=(height, width), dim=(-2, -1))


def binarise_top(values: Tensor, count: Tensor) -> Tensor:
    """bool (B, N): True at the ``count[i]`` largest of ``values[i]`` (B, N) (authors'
    ``binarise_mask`` with max_soft 0; ties broken by a stable descending sort)."""
    order = torch.argsort(values, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(values.shape[1], device=values.device).expand_as(order)
    )
    return ranks < count.to(values.device)[:, None]


def _as_spectrum(v: Any) -> str:
    if v not in ("code", "paper"):
        raise ParameterError("spectrum", f'spectrum must be "code" or "paper", got {v!r}')
    return str(v)


@AUGMENTATIONS.register("fmix")
class FMix(_BetaMix):
    """FMix (Harris et al. 2020; authors' code ``ecs-vlc/FMix``) with a per-sample mask.

    Per sample: λ ~ Beta(``alpha``, ``alpha``); a low-frequency image from Gaussian Fourier
    coefficients scaled by 1/f^``decay_power`` (:func:`fmix_low_freq`; ``spectrum="code"`` is
    bit-for-bit the released code's construction, the default because published FMix results and
    ports use it; ``"paper"`` is the paper's full complex half-plane spectrum); its top
    n = ⌈λN⌉ or ⌊λN⌋ pixels (each with probability 1/2, as the reference) keep the sample's own
    image, the rest come from the partner (a random permutation of the batch). λ becomes n/N, the
    exact kept share; targets per ``label_mixing``. The reference draws one mask per batch; we
    draw one per sample. Soft edges (``max_soft``) are not implemented (reference default 0). A
    sample paired with itself keeps its image. Log: ``lam``, ``box`` (zeros: no box),
    ``partner``, ``applied``.
    """

    name = "fmix"

    def __init__(
        self,
        alpha: float = 1.0,
        decay_power: float = 3.0,
        spectrum: str = "code",
        label_mixing: bool = True,
        p: float = 1.0,
    ) -> None:
        super().__init__(alpha, label_mixing, p)
        self.decay_power = as_float("decay_power", decay_power, 0.0)
        self.spectrum = _as_spectrum(spectrum)

    def draw(self, b: int, height: int, width: int, generator: torch.Generator) -> AugLog:
        """Per-sample partner, λ (as drawn), ceil/floor coin and Gaussian spectrum ``param``,
        drawn in this order after the apply mask; ``count`` = n, the number of kept pixels."""
        if height < 2:
            raise ValueError(f"fmix needs images at least 2 pixels high, got {height}")
        perm, lam = self.draw_pair(b, generator)
        coin = uniform(b, 0, 1, generator)
        wf = fmix_freqs(height, width).shape[1]
        rows = height if self.spectrum == "paper" else 2
        param = torch.randn(b, rows, wf, 2, generator=generator, dtype=torch.float64)
        n = height * width
        count = torch.where(coin > 0.5, torch.ceil(lam * n), torch.floor(lam * n)).long()
        return {"partner": perm, "lam": lam, "coin": coin, "param": param, "count": count}

    def keep_masks(self, param: Tensor, count: Tensor, height: int, width: int) -> Tensor:
        """bool (B, H, W): True where the sample keeps its own pixel."""
        low = fmix_low_freq(param, self.decay_power, height, width, self.spectrum)
        return binarise_top(low.flatten(1), count).view(-1, height, width)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask, prm = self.draw_masked(images, generator)
        partner = torch.where(mask, prm["partner"], torch.arange(b))
        lam = torch.where(mask, prm["count"].double() / (h * w), 1.0)
        log = {"lam": lam.float(), "box": torch.zeros(b, 4, dtype=torch.long),
               "partner": partner, "applied": mask}
        if not bool(mask.any()):
            return images, targets, log
        dev = images.device
        keep = self.keep_masks(prm["param"].to(dev), prm["count"], h, w)
        keep = keep | ~mask.to(dev).view(b, 1, 1)
        src = images.index_select(0, partner.to(dev))
        out = torch.where(keep.unsqueeze(1), images, src)
        return out, mix_targets(targets, partner, lam, mask, self.label_mixing), log

