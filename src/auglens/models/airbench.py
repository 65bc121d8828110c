"""A fast network for small images, after KellerJordan/cifar10-airbench (``airbench94.py``).

Kept from airbench: the architecture (conv-BN-GELU blocks with max-pool downsampling, widths
64/256/256 at ``width=1``), a frozen **patch-whitening first convolution** initialised from the
training images' 2×2 patch covariance (`init_whitening`), identity (Dirac) initialisation of the
3×3 convolutions, BatchNorm without a learned scale and with a large update weight (airbench's
momentum 0.6 = PyTorch ``momentum=0.4``), no classifier bias and logits scaled by 1/9.
Left out on purpose, because they are augmentations or label treatments that a study of
augmentations must control itself: flips, translations, label smoothing, test-time augmentation
(and airbench's lookahead/EMA, which the auglens trainer does not do).

Layout for an S×S input (S even)::

    whiten   zero-pad right/bottom by 1, Conv2d(3, 24, 2×2, bias), frozen weights     S×S
    act      GELU
    block1   Conv3×3(24→c1) → MaxPool2 → BN → GELU → Conv3×3(c1→c1) → BN → GELU       S/2
    block2   the same, c1→c2                                    (Grad-CAM default)   S/4
    block3   the same, c2→c3                                                         S/8
    pool     global max pool;  head  Linear(c3, K, no bias);  logits × ``logit_scale``

(c1, c2, c3) = round((64, 256, 256) × ``width``), at least 8. The padding keeps whitened
position (i, j) on the patch of pixels i..i+1, j..j+1, so block2 is 8×8 at 32 px (airbench has no
padding: 31 → 15 → 7 → 3). BN biases are stored divided by ``bias_scale`` and multiplied back in
the forward pass; with SGD this trains them at ``bias_scale²`` × the learning rate (airbench
trains BN biases at 64 × the learning rate: ``bias_scale=8``), with weight decay 0 as the auglens
trainer gives every 1-D parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AuglensError

WIDTHS = (64, 256, 256)
#: Images used by default to fit the whitening (airbench uses the first 5000 training images).
WHITEN_IMAGES = 5000


class Whitening(nn.Conv2d):
    """2×2 patch-whitening convolution: 2·12 filters ±v_k/√(λ_k + eps) (frozen), bias
    ∓v_k·μ, fitted by `init_whitening`; ``fitted`` (not saved) tells whether that happened."""

    def __init__(self, eps: float = 5e-4) -> None:
        super().__init__(3, 24, kernel_size=2, padding=0, bias=True)
        self.weight.requires_grad_(False)
        self.eps = float(eps)
        self.fitted = False

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class ScaledBiasNorm(nn.BatchNorm2d):
    """BatchNorm with scale fixed to 1 and bias = ``bias_scale`` × a stored parameter."""

    def __init__(self, channels: int, momentum: float, bias_scale: float, eps: float) -> None:
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.bias_scale = float(bias_scale)
        self.scaled_bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + (self.scaled_bias * self.bias_scale).view(1, -1, 1, 1).to(
            x.dtype
        )


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])  # airbench: identity on the first channels
    return conv


class ConvGroup(nn.Module):
    """Conv3×3 → MaxPool2 → BN → GELU → Conv3×3 → BN → GELU (airbench's ConvGroup)."""

    def __init__(self, cin: int, cout: int, momentum: float, bias_scale: float, eps: float):
        super().__init__()
        self.conv1 = _conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ScaledBiasNorm(cout, momentum, bias_scale, eps)
        self.conv2 = _conv(cout, cout)
        self.norm2 = ScaledBiasNorm(cout, momentum, bias_scale, eps)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """airbench94's network without its augmentation tricks (module docstring).

    ``width`` scales (64, 256, 256); ``bn_momentum`` in PyTorch's convention (weight of the new
    batch); ``logit_scale`` multiplies the logits; ``whiten_eps`` regularises the whitening.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        bn_momentum: float = 0.4,
        bias_scale: float = 8.0,
        logit_scale: float = 1 / 9,
        whiten_eps: float = 5e-4,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        checks = [
            (isinstance(width, int | float) and 0 < width <= 8, f"width in (0, 8], got {width!r}"),
            (0 < bn_momentum <= 1, f"bn_momentum in (0, 1], got {bn_momentum!r}"),
            (bias_scale > 0, f"bias_scale > 0, got {bias_scale!r}"),
            (logit_scale > 0, f"logit_scale > 0, got {logit_scale!r}"),
            (whiten_eps >= 0, f"whiten_eps >= 0, got {whiten_eps!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise AuglensError(f"airbench: {msg}")
        c1, c2, c3 = (max(8, round(w * width)) for w in WIDTHS)
        self.widths = (c1, c2, c3)
        self.whiten = Whitening(whiten_eps)
        self.act = nn.GELU()
        self.block1 = ConvGroup(24, c1, bn_momentum, bias_scale, bn_eps)
        self.block2 = ConvGroup(c1, c2, bn_momentum, bias_scale, bn_eps)
        self.block3 = ConvGroup(c2, c3, bn_momentum, bias_scale, bn_eps)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c3, num_classes, bias=False)
        self.logit_scale = float(logit_scale)
        self.default_target_layer = "block2"

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.head(self.pool(x).flatten(1)) * self.logit_scale


# ----------------------------------------------------------------------------- whitening


def _whitening_layers(model: nn.Module) -> list[Whitening]:
    return [m for m in model.modules() if isinstance(m, Whitening)]


def patch_moments(
    images: Any,
    normalize: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, Tensor, int]:
    """(mean (12,), centred covariance (12, 12), count) of every valid 2×2 patch of the images,
    float64 on the CPU. Patch vector order = (channel, row, column), as a conv weight flattens.

    ``images``: uint8 (N, 3, H, W) (scaled by 1/255) or float in [0, 1], a tensor or anything
    sliceable like one (`LazyImages`); ``normalize`` then maps them to model input.
    ``batch_size`` None: about 2M pixels per batch (≤ 200 MB of float64 patches)."""
    n = images.shape[0]
    if n == 0 or getattr(images, "ndim", 0) != 4 or images.shape[1] != 3:
        raise AuglensError(
            f"init_whitening needs images (N, 3, H, W) with N >= 1, got {tuple(images.shape)}"
        )
    if batch_size is None:
        batch_size = max(1, min(500, (1 << 21) // (images.shape[2] * images.shape[3])))
    s1 = torch.zeros(12, dtype=torch.float64)
    s2 = torch.zeros(12, 12, dtype=torch.float64)
    count = 0
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size]
        x = x.to("cpu", torch.float64)
        if images.dtype == torch.uint8:
            x = x / 255
        if normalize is not None:
            x = normalize(x)
        p = F.unfold(x, kernel_size=2).transpose(1, 2).reshape(-1, 12)  # (B·L, 12)
        s1 += p.sum(0)
        s2 += p.T @ p
        count += p.shape[0]
    mean = s1 / count
    cov = s2 / count - torch.outer(mean, mean)
    return mean, (cov + cov.T) / 2, count


@torch.no_grad()
def init_whitening(
    model: nn.Module,
    images: Any,
    normalize: Callable[[Tensor], Tensor] | None = None,
    max_images: int | None = WHITEN_IMAGES,
    batch_size: int | None = None,
) -> Tensor:
    """Fit every `Whitening` layer of ``model`` on the first ``max_images`` images; returns the
    eigenvalues (12,) of the patch covariance, largest first.

    Call it once, right after building the model and before training, on the **un-augmented
    training images** (uint8 (N, 3, H, W), or float in [0, 1]) with the dataset's ``normalize``
    (what the model sees as input). Deterministic: float64 on the CPU, eigenvectors signed so that
    their largest-magnitude entry is positive. With mean μ, covariance C = V diag(λ) Vᵀ of the
    2×2×3 patches and W = diag(λ + eps)^(-1/2) Vᵀ, filters are (W, −W) and biases (−Wμ, +Wμ): on
    the fitted patches the first 12 outputs have mean 0 and covariance diag(λ/(λ + eps)) ≈ I.
    """
    layers = _whitening_layers(model)
    if not layers:
        raise AuglensError(
            f"{type(model).__name__} has no whitening layer (only 'airbench' models have one)"
        )
    if max_images is not None:
        images = images[:max_images]
    mean, cov, _ = patch_moments(images, normalize, batch_size)
    lam, vec = torch.linalg.eigh(cov)  # ascending
    lam, vec = lam.flip(0).clamp_min(0), vec.flip(1)
    pick = vec.abs().argmax(0)
    vec = vec * torch.sign(vec[pick, torch.arange(12)])
    for layer in layers:
        w = vec.T / torch.sqrt(lam + layer.eps)[:, None]  # (12, 12): row k = v_k / √(λ_k + eps)
        b = w @ mean
        dev, dt = layer.weight.device, layer.weight.dtype
        layer.weight.copy_(torch.cat([w, -w]).view(24, 3, 2, 2).to(dev, dt))
        layer.bias.copy_(torch.cat([-b, b]).to(dev, dt))
        layer.fitted = True
    return lam


def init_from_data(
    model: nn.Module,
    images: Any,
    normalize: Callable[[Tensor], Tensor] | None = None,
    max_images: int | None = WHITEN_IMAGES,
) -> bool:
    """Data-dependent initialisation for any model: fits whitening layers if the model has any
    (`init_whitening`), else does nothing. True when something was fitted."""
    if not _whitening_layers(model):
        return False
    init_whitening(model, images, normalize, max_images)
    return True


def airbench_lr(batch_size: int, lr_per_1024: float = 1.5) -> float:
    """airbench94's learning rate for a mean (not summed) loss at ``batch_size``:
    11.5 / (1024·(1 + 1/(1 − 0.85))) per example × batch = 1.5 per 1024 images, linear in batch."""
    return lr_per_1024 * batch_size / 1024


def airbench_weight_decay(batch_size: int, lr: float) -> float:
    """airbench94's weight decay (0.0153 per 1024 examples, 0.002 × parameter per step at batch
    1024) expressed as SGD's coupled ``weight_decay`` for a mean loss at learning rate ``lr``."""
    per_step = 0.0153 * batch_size / (1024 * (1 + 1 / (1 - 0.85)))
    return per_step / lr if lr > 0 else math.nan
