"""Mixed-sample augmentations (SPEC §7): Cutout, Mixup, CutMix, SaliencyMix.

All four draw every random parameter per sample from the passed generator (order: apply mask,
then partner permutation, then λ, then box centre, as far as each uses them), work on the whole
batch on the images' device, and log per sample ``lam`` float32 (B,), ``box`` int64 (B, 4)
(x1, y1, x2, y2, ends exclusive), ``partner`` int64 (B,) and ``applied`` bool (B,), all on CPU.
A sample that is not applied keeps its image and target bit-identical and logs lam 1, box 0,
partner = itself.

``label_mixing`` (Mixup, CutMix, SaliencyMix): True -> targets λ·t + (1-λ)·t[partner] (soft-label
CE = λ·CE(y_a) + (1-λ)·CE(y_b)); False -> the target of the image that keeps the larger share,
i.e. its own when λ >= 0.5, else the partner's (SPEC §7, label-mixing ablation).

Saliency for SaliencyMix: the spectral residual of Hou & Zhang (CVPR 2007), see
:func:`spectral_residual_saliency`. The reference implementation uses OpenCV's fine-grained static
saliency (Montabone & Soto 2010) on one image per batch; we need one map per sample, so we use a
method that is two batched FFTs and four small matrix products on the training device, needs no
OpenCV contrib build (``cv2.saliency`` is not in the plain ``opencv-python`` wheels), and is
deterministic and checkable against a few lines of ``numpy.fft``. Like the reference's map, it
peaks on small, high-contrast structure; the two peaks are not the same pixel in general.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from scipy.special import betaincinv
from torch import Tensor

from ..utils import gaussian_taps
from ._util import _is_number, as_bool, as_float
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError
from .photometric import _grayscale


def sample_beta(n: int, alpha: float, beta: float, generator: torch.Generator) -> Tensor:
    """float64 (n,) ~ Beta(alpha, beta) on CPU: inverse CDF of U[0, 1) draws from ``generator``."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.from_numpy(betaincinv(alpha, beta, u.numpy())).clamp_(0.0, 1.0)


def cutmix_boxes(
    lam: Tensor, cx: Tensor, cy: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """clovaai ``rand_bbox`` per sample: cut (⌊W·√(1-λ)⌋, ⌊H·√(1-λ)⌋), centre (cx, cy), half
    sides ``cut // 2`` each way, clipped. Returns int64 boxes (B, 4) as (x1, y1, x2, y2), ends
    exclusive, and the exact unpasted area fraction λ (B,) float64."""
    cut_rat = torch.sqrt(1.0 - lam)
    cut_w = torch.floor(width * cut_rat).long()
    cut_h = torch.floor(height * cut_rat).long()
    x1 = (cx - cut_w // 2).clamp(0, width)
    y1 = (cy - cut_h // 2).clamp(0, height)
    x2 = (cx + cut_w // 2).clamp(0, width)
    y2 = (cy + cut_h // 2).clamp(0, height)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return boxes, 1.0 - box_area_fraction(boxes, height, width)


def box_area_fraction(boxes: Tensor, height: int, width: int) -> Tensor:
    """float64 (B,): area of int boxes (B, 4) (x1, y1, x2, y2, ends exclusive) over H·W."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return area.double() / (width * height)


def box_masks(boxes: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """bool (B, 1, H, W) on ``device``: True inside each sample's box (ends exclusive)."""
    bx = boxes.to(device)
    xs = torch.arange(width, device=device)
    ys = torch.arange(height, device=device)
    in_x = (xs >= bx[:, 0:1]) & (xs < bx[:, 2:3])  # (B, W)
    in_y = (ys >= bx[:, 1:2]) & (ys < bx[:, 3:4])  # (B, H)
    return (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)


def mix_targets(
    targets: Tensor, partner: Tensor, lam: Tensor, applied: Tensor, label_mixing: bool
) -> Tensor:
    """Targets of a mixed batch: λ·t + (1-λ)·t[partner] if ``label_mixing``, else the target of
    the larger share (own when λ >= 0.5); samples not ``applied`` keep theirs bit-identical.
    ``partner``, ``lam`` (float64) and ``applied`` are CPU (B,) tensors."""
    dev = targets.device
    other = targets.index_select(0, partner.to(dev))
    if label_mixing:
        lam_t = lam.to(device=dev, dtype=targets.dtype)[:, None]
        mixed = lam_t * targets + (1.0 - lam_t) * other
    else:
        mixed = torch.where((lam >= 0.5).to(dev)[:, None], targets, other)
    return torch.where(applied.to(dev)[:, None], mixed, targets)


def _paste_partner_boxes(
    images: Tensor,
    targets: Tensor,
    mask: Tensor,
    perm: Tensor,
    boxes: Tensor,
    lam: Tensor,
    label_mixing: bool,
    source: Tensor | None = None,
) -> tuple[Tensor, Tensor, AugLog]:
    """CutMix-style paste: each applied sample gets its partner's pixels inside its box (same
    location in both images). ``lam`` is the exact unpasted fraction (float64, CPU); ``source``
    may pass ``images[perm]`` if already computed."""
    b, _, h, w = images.shape
    boxes = torch.where(mask[:, None], boxes, 0)
    lam = torch.where(mask, lam, 1.0)
    partner = torch.where(mask, perm, torch.arange(b))
    log = {"lam": lam.float(), "box": boxes, "partner": partner, "applied": mask}
    if not bool(mask.any()):
        return images, targets, log
    region = box_masks(boxes, h, w, images.device)  # empty where not applied
    if source is None:
        source = images.index_select(0, perm.to(images.device))
    out = torch.where(region, source, images)
    return out, mix_targets(targets, partner, lam, mask, label_mixing), log


# ---------------------------------------------------------------- cutout


def _as_fill(v: Any) -> str | tuple[float, float, float]:
    if v == "mean":
        return "mean"
    ok = (
        isinstance(v, Sequence)
        and not isinstance(v, str)
        and len(v) == 3
        and all(_is_number(x) and 0.0 <= x <= 1.0 for x in v)
    )
    if not ok:
        raise ParameterError(
            "fill", f'fill must be "mean" or three numbers (R, G, B) in [0, 1], got {v!r}'
        )
    return (float(v[0]), float(v[1]), float(v[2]))


@AUGMENTATIONS.register("cutout")
class Cutout(Augmentation):
    """Cutout (DeVries & Taylor 2017): one square per sample filled with a constant; labels kept.

    Side s = ⌊size_frac·min(H, W)⌋ (default 0.5: 16 px at 32×32, the CIFAR setting of the
    reference ``uoguelph-mlrg/Cutout``), integer centre (cx, cy) uniform over the image, box
    [c - s//2, c - s//2 + s) per axis clipped to the image (for even s exactly the reference's
    [c - s/2, c + s/2)). ``fill="mean"`` (default) fills with the dataset mean in [0, 1] space,
    which is 0 after normalisation (SPEC §7); it needs ``set_dataset_stats(mean, std)`` (the
    trainer calls it) and raises otherwise. Or ``fill=(r, g, b)`` in [0, 1]. ``label_mixing`` is
    accepted so that one ablation grid fits all four augmentations; Cutout never changes targets,
    so True and False are identical. Log: ``lam`` = unerased area fraction (not a label weight),
    ``box``, ``partner`` = itself, ``applied``.
    """

    name = "cutout"

    def __init__(
        self,
        size_frac: float = 0.5,
        fill: str | tuple[float, float, float] = "mean",
        label_mixing: bool = False,
        p: float = 1.0,
    ) -> None:
        super().__init__(p)
        self.size_frac = as_float("size_frac", size_frac, 0.0, 1.0)
        self.fill = _as_fill(fill)
        self.label_mixing = as_bool("label_mixing", label_mixing)
        self.mean: tuple[float, float, float] | None = None

    def set_dataset_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store the dataset mean (three floats in [0, 1]) used by ``fill="mean"``."""
        try:
            vals = tuple(float(m) for m in mean)
        except (TypeError, ValueError):
            vals = ()
        if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
            raise ValueError(f"cutout: dataset mean must be three numbers in [0, 1], got {mean!r}")
        self.mean = vals  # type: ignore[assignment]

    def side(self, height: int, width: int) -> int:
        """Square side in pixels for an H×W image."""
        return int(math.floor(self.size_frac * min(height, width) + 1e-9))

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, c, h, w = images.shape
        if self.fill == "mean":
            if self.mean is None:
                raise RuntimeError(
                    'cutout: fill="mean" needs the dataset mean; call '
                    "set_dataset_stats(mean, std) first (the trainer's job)"
                )
            fill = self.mean
        else:
            fill = self.fill
        if c != 3:
            raise ValueError(f"cutout: fill has 3 channels but images have {c}")
        mask = self.draw_apply_mask(b, generator)
        cx = torch.randint(0, w, (b,), generator=generator)
        cy = torch.randint(0, h, (b,), generator=generator)
        s = self.side(h, w)
        x1, y1 = cx - s // 2, cy - s // 2
        boxes = torch.stack(
            [x1.clamp(0, w), y1.clamp(0, h), (x1 + s).clamp(0, w), (y1 + s).clamp(0, h)], dim=1
        )
        boxes = torch.where(mask[:, None], boxes, 0)
        lam = 1.0 - box_area_fraction(boxes, h, w)
        log = {"lam": lam.float(), "box": boxes, "partner": torch.arange(b), "applied": mask}
        if not bool(mask.any()):
            return images, targets, log
        region = box_masks(boxes, h, w, images.device)
        value = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return torch.where(region, value, images), targets, log


# ---------------------------------------------------------------- mixup


class _BetaMix(Augmentation):
    """Shared by the mixed-sample augmentations with λ ~ Beta(alpha, alpha): the parameters
    and the pair draws."""

    mixes_labels = True

    def __init__(self, alpha: float = 1.0, label_mixing: bool = True, p: float = 1.0) -> None:
        super().__init__(p)
        self.alpha = as_float("alpha", alpha, 1e-6)
        self.label_mixing = as_bool("label_mixing", label_mixing)

    def draw_pair(self, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Partner permutation int64 (B,), then λ ~ Beta(alpha, alpha) float64 (B,), in that
        generator order (after the apply mask)."""
        perm = torch.randperm(b, generator=generator)
        return perm, sample_beta(b, self.alpha, self.alpha, generator)

    def draw_mixing(self, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """The apply mask, then `draw_pair`: (mask, partner permutation, λ)."""
        mask = self.draw_apply_mask(b, generator)
        return mask, *self.draw_pair(b, generator)


@AUGMENTATIONS.register("mixup")
class Mixup(_BetaMix):
    """Mixup (Zhang et al. 2018) with a per-sample λ and partner.

    λ ~ Beta(alpha, alpha) (default 1.0, i.e. λ ~ U[0, 1]: the mixup paper's CIFAR setting and the
    same λ distribution as ``cutmix``'s default; the paper used 0.2 on ImageNet); partner = a
    random permutation of the batch; image = λ·x + (1-λ)·x[partner] (``torch.lerp``, so a sample
    paired with itself keeps its image exactly). Targets per ``label_mixing`` (module docstring).
    Log: ``lam`` float (B,), ``box`` all zeros (no box), ``partner``, ``applied``.
    """

    name = "mixup"

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b = images.shape[0]
        mask, perm, lam = self.draw_mixing(b, generator)
        lam = torch.where(mask, lam, 1.0)
        partner = torch.where(mask, perm, torch.arange(b))
        log = {
            "lam": lam.float(),
            "box": torch.zeros(b, 4, dtype=torch.long),
            "partner": partner,
            "applied": mask,
        }
        if not bool(mask.any()):
            return images, targets, log
        dev = images.device
        weight = (1.0 - lam).to(device=dev, dtype=images.dtype).view(b, 1, 1, 1)
        mixed = torch.lerp(images, images.index_select(0, partner.to(dev)), weight)
        out = torch.where(mask.to(dev).view(b, 1, 1, 1), mixed, images)
        return out, mix_targets(targets, partner, lam, mask, self.label_mixing), log


# ---------------------------------------------------------------- cutmix


@AUGMENTATIONS.register("cutmix")
class CutMix(_BetaMix):
    """CutMix (clovaai/CutMix-PyTorch) with a per-sample λ, box and partner.

    λ ~ Beta(alpha, alpha); partner = a random permutation of the batch; box from
    ``cutmix_boxes`` (uniform integer centre, clipped); the partner's box region is pasted and λ
    becomes the exact unpasted area fraction. Targets: λ·t + (1-λ)·t[partner]
    (``label_mixing=True``; soft-label CE = λ·CE(y_a) + (1-λ)·CE(y_b)), else the target of the
    image keeping the larger area (own target when λ >= 0.5). A sample paired with itself keeps
    its image. Log: ``lam`` float (B,), ``box`` int64 (B, 4) (x1, y1, x2, y2) exclusive,
    ``partner`` int64 (B,), ``applied`` (B,); not applied: lam 1, box 0, partner = itself.
    """

    name = "cutmix"

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask, perm, lam = self.draw_mixing(b, generator)
        cx = torch.randint(0, w, (b,), generator=generator)
        cy = torch.randint(0, h, (b,), generator=generator)
        boxes, lam = cutmix_boxes(lam, cx, cy, h, w)
        return _paste_partner_boxes(images, targets, mask, perm, boxes, lam, self.label_mixing)


# ---------------------------------------------------------------- saliencymix


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> tuple[float, ...]:
    """Normalised weights exp(-i²/(2σ²)) at offsets |i| <= r = ⌊truncate·σ + 0.5⌋, i = -r..r
    (``scipy.ndimage.gaussian_filter``'s kernel)."""
    return tuple(gaussian_taps(sigma, int(truncate * sigma + 0.5)).tolist())


@functools.lru_cache(maxsize=32)
def _filter_matrix(n: int, kernel: tuple[float, ...], replicate: bool) -> Tensor:
    """float64 (n, n) M with (M @ v)[i] = Σ_j kernel[j]·v[i + j - r]: 1-D correlation with an odd
    kernel (2r + 1,), outside indices clamped to the edge (``replicate``) or taken as 0."""
    r = len(kernel) // 2
    rows = torch.arange(n)[:, None].expand(n, len(kernel))
    cols = rows + torch.arange(-r, r + 1)
    weights = torch.tensor(kernel, dtype=torch.float64).expand(n, -1).clone()
    if replicate:
        cols = cols.clamp(0, n - 1)
    else:
        weights[(cols < 0) | (cols >= n)] = 0.0
        cols = cols.clamp(0, n - 1)
    m = torch.zeros(n, n, dtype=torch.float64)
    return m.index_put_((rows, cols), weights, accumulate=True)


def _separable(x: Tensor, kernel: tuple[float, ...], replicate: bool) -> Tensor:
    """Filter (B, H, W) float64 along both axes with ``kernel`` (2 matrix products)."""
    h, w = x.shape[-2:]
    mh = _filter_matrix(h, kernel, replicate).to(x.device)
    mw = _filter_matrix(w, kernel, replicate).to(x.device)
    return mh @ x @ mw.T


_BOX3 = (1.0 / 3.0,) * 3


def spectral_residual_saliency(images: Tensor, sigma: float = 2.5, floor: float = 1e-2) -> Tensor:
    """Spectral-residual saliency (Hou & Zhang 2007) of each image: (B, 3, H, W) -> (B, H, W).

    The authors' MATLAB code at the image's own resolution, in float64: gray = luma (0.2989, 0.587,
    0.114); F = fft2(gray); L = log(max(|F|, ε)); R = L - mean3x3(L) (replicate padding,
    unshifted spectrum); S = |ifft2(exp(R + i·angle(F)))|², smoothed with a Gaussian of std
    ``sigma`` px (radius ⌊4σ + 0.5⌋; zero padding like their ``imfilter``; ``sigma=0``: none).
    Not rescaled (``mat2gray`` keeps the peak). Two deliberate details:

    * ε = ``floor`` × the RMS amplitude of the non-DC spectrum (√(H·W)·std(gray), at least
      1e-12). The original takes log 0 = -inf at exact spectral zeros (flat synthetic images),
      which makes the map meaningless; a floor 40 dB below the RMS leaves natural and textured
      images' maps practically unchanged and keeps the map invariant to the image's contrast.
    * Zero padding damps the outer ~σ pixels. That is the authors' choice and we keep it: with
      replicate padding instead, the FFT's periodic wrap (left edge meets right edge) puts the
      peak of most noise-like images on the image border (95% of uniform-noise 32×32 images at
      σ = 2.5), which would clip SaliencyMix's boxes.
    """
    h, w = images.shape[-2:]
    gray = _grayscale(images.double()).squeeze(1)  # (B, H, W)
    spec = torch.fft.fft2(gray)
    # exp(R + i·angle(F)) = F·exp(R)/|F| (= exp(R) where F = 0, angle 0), in real arithmetic:
    # complex elementwise ops (abs, angle, polar) are several times slower on CPU.
    re, im = spec.real, spec.imag
    power = re.square() + im.square()
    amp = power.sqrt()
    # Parseval: Σ_{k≠0} |F_k|² = (H·W)² var(gray), so the non-DC RMS is √(H·W)·std(gray).
    rms = ((power.sum(dim=(-2, -1)) - power[:, 0, 0]).clamp_min(0.0) / (h * w)).sqrt()
    eps = (floor * rms).clamp_min(1e-12)[:, None, None]
    log_amp = torch.maximum(amp, eps).log()
    zero = amp == 0
    residual = log_amp - _separable(log_amp, _BOX3, replicate=True)
    gain = residual.exp_() / torch.where(zero, 1.0, amp)
    z = torch.complex(torch.where(zero, 1.0, re) * gain, im * gain)
    back = torch.fft.ifft2(z)
    sal = back.real.square() + back.imag.square()
    if sigma > 0:
        sal = _separable(sal, _gaussian_kernel(sigma), replicate=False)
    return sal


def saliency_peaks(saliency: Tensor) -> tuple[Tensor, Tensor]:
    """Peak (x, y) int64 (B,) each of maps (B, H, W): the first maximum in row-major order."""
    w = saliency.shape[-1]
    flat = saliency.flatten(1).argmax(dim=1)
    return flat % w, flat // w


@AUGMENTATIONS.register("saliencymix")
class SaliencyMix(_BetaMix):
    """SaliencyMix (Uddin et al. 2021): CutMix with the box centred on the source's saliency peak.

    λ ~ Beta(alpha, alpha); partner (the source) = a random permutation of the batch; the box
    (``cutmix_boxes``: side ⌊√(1-λ)·side⌋, half sides ``cut // 2`` each way, clipped) is centred
    on the peak of the partner's :func:`spectral_residual_saliency` (std ``saliency_sigma`` px;
    computed on the [0, 1] images, the reference uses normalised ones), and the partner's pixels
    in that box are pasted at the same location. λ becomes the exact unpasted fraction; targets
    per ``label_mixing`` as CutMix. Per sample, where the reference computes one map and one box
    per batch. Log as CutMix.
    """

    name = "saliencymix"
    def __init__(
        self,
        alpha: float = 1.0,
        label_mixing: bool = True,
        saliency_sigma: float = 2.5,
        p: float = 1.0,
    ) -> None:
        super().__init__(alpha, label_mixing, p)
        self.saliency_sigma = as_float("saliency_sigma", saliency_sigma, 0.0, 64.0)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask, perm, lam = self.draw_mixing(b, generator)
        src = None
        cx = cy = torch.zeros(b, dtype=torch.long)
        if bool(mask.any()):
            src = images.index_select(0, perm.to(images.device))
            px, py = saliency_peaks(spectral_residual_saliency(src, self.saliency_sigma))
            cx, cy = px.cpu(), py.cpu()
        boxes, lam = cutmix_boxes(lam, cx, cy, h, w)
        return _paste_partner_boxes(
            images, targets, mask, perm, boxes, lam, self.label_mixing, source=src
        )
