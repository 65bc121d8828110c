"""Mixed-sample augmentations (SPEC §7): CutMix with per-sample boxes and λ."""

from __future__ import annotations

import torch
from scipy.special import betaincinv
from torch import Tensor

from ._util import as_bool, as_float
from .base import AUGMENTATIONS, AugLog, Augmentation


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
    lam_exact = 1.0 - ((x2 - x1) * (y2 - y1)).double() / (width * height)
    return boxes, lam_exact


@AUGMENTATIONS.register("cutmix")
class CutMix(Augmentation):
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
    mixes_labels = True

    def __init__(self, alpha: float = 1.0, label_mixing: bool = True, p: float = 1.0) -> None:
        super().__init__(p)
        self.alpha = as_float("alpha", alpha, 1e-6)
        self.label_mixing = as_bool("label_mixing", label_mixing)

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, _, h, w = images.shape
        mask = self.draw_apply_mask(b, generator)
        perm = torch.randperm(b, generator=generator)
        lam = sample_beta(b, self.alpha, self.alpha, generator)
        cx = torch.randint(0, w, (b,), generator=generator)
        cy = torch.randint(0, h, (b,), generator=generator)
        boxes, lam = cutmix_boxes(lam, cx, cy, h, w)
        boxes = torch.where(mask[:, None], boxes, 0)
        lam = torch.where(mask, lam, 1.0)
        partner = torch.where(mask, perm, torch.arange(b))
        log = {"lam": lam.float(), "box": boxes, "partner": partner, "applied": mask}
        if not bool(mask.any()):
            return images, targets, log

        dev = images.device
        bx = boxes.to(dev)
        xs = torch.arange(w, device=dev)
        ys = torch.arange(h, device=dev)
        in_x = (xs >= bx[:, 0:1]) & (xs < bx[:, 2:3])  # (B, W)
        in_y = (ys >= bx[:, 1:2]) & (ys < bx[:, 3:4])  # (B, H)
        region = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)  # (B, 1, H, W)
        partner_dev = partner.to(dev)
        out = torch.where(region, images.index_select(0, partner_dev), images)

        applied = mask.to(dev)[:, None]
        other = targets.index_select(0, partner_dev)
        if self.label_mixing:
            lam_t = lam.to(device=dev, dtype=targets.dtype)[:, None]
            mixed = lam_t * targets + (1.0 - lam_t) * other
        else:
            mixed = torch.where((lam >= 0.5).to(dev)[:, None], targets, other)
        return out, torch.where(applied, mixed, targets), log
