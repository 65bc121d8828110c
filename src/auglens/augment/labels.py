"""Label-only augmentations: the images pass through unchanged, only the targets are softened, so
that label softening can be studied apart from image mixing."""

from __future__ import annotations

import functools
import math

import torch
from scipy.optimize import brentq
from scipy.special import xlogy
from torch import Tensor

from ._util import as_float
from .base import AUGMENTATIONS, AugLog, Augmentation, ParameterError


def smoothed_entropy(epsilon: float, num_classes: int) -> float:
    """Entropy in nats of a one-hot target over K classes smoothed with ε: one class has
    1 - ε + ε/K, the other K - 1 have ε/K (0·log 0 = 0)."""
    k = num_classes
    top, rest = 1.0 - epsilon + epsilon / k, epsilon / k
    return float(-xlogy(top, top) - (k - 1) * xlogy(rest, rest))


@functools.lru_cache(maxsize=256)
def smoothing_for_entropy(entropy: float, num_classes: int) -> float:
    """The ε in [0, 1] whose smoothed one-hot target (K = ``num_classes``) has entropy
    ``entropy`` nats. The entropy rises strictly from 0 (ε = 0) to log K (ε = 1, uniform), so the
    root is unique; solved with Brent's method to machine precision. ``entropy`` must lie in
    [0, log K]."""
    if num_classes < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got {num_classes}")
    top = math.log(num_classes)
    if not 0.0 <= entropy <= top:
        raise ValueError(
            f"label_smoothing: entropy {entropy} nats is outside [0, log K = {top:.6g}] for "
            f"K = {num_classes} classes"
        )
    if entropy == 0.0:
        return 0.0
    if entropy == top:
        return 1.0
    return float(
        brentq(lambda e: smoothed_entropy(e, num_classes) - entropy, 0.0, 1.0,
               xtol=1e-15, rtol=1e-15, maxiter=200)
    )


def label_entropy(targets: Tensor) -> Tensor:
    """Entropy in nats of each target distribution (B, K) -> (B,) float64 (0·log 0 = 0); e.g.
    to match ``entropy`` to the mean entropy of mixup/CutMix targets."""
    t = targets.double()
    return -torch.xlogy(t, t).sum(dim=1)


#: registered augmentations that change only the labels (images untouched)
LABEL_ONLY = ("label_smoothing",)


@AUGMENTATIONS.register("label_smoothing")
class LabelSmoothing(Augmentation):
    """Label smoothing as an augmentation (Szegedy et al. 2016): images unchanged, targets t ->
    (1 - ε)·t + ε/K for K classes (as ``F.cross_entropy(label_smoothing=ε)``).

    Give ``epsilon`` (in [0, 1]) or ``entropy`` (nats): the ε that makes a one-hot target's
    entropy equal that value for the batch's K (:func:`smoothing_for_entropy`), e.g. the mean
    entropy of mixup/CutMix targets (:func:`label_entropy`), to compare equally soft labels.
    Neither: ε = 0.1. Both: error. Smooths whatever targets it gets (after a mixer in a list too).
    Log: ``epsilon`` (B,) (0 where not applied), ``applied``.
    """

    name = "label_smoothing"
    mixes_labels = True

    def __init__(
        self, epsilon: float | None = None, entropy: float | None = None, p: float = 1.0
    ) -> None:
        super().__init__(p)
        if epsilon is not None and entropy is not None:
            raise ParameterError("entropy", "give epsilon or entropy, not both")
        self.epsilon = None if epsilon is None else as_float("epsilon", epsilon, 0.0, 1.0)
        self.entropy = None if entropy is None else as_float("entropy", entropy, 0.0)
        if self.epsilon is None and self.entropy is None:
            self.epsilon = 0.1

    def epsilon_for(self, num_classes: int) -> float:
        """ε used for targets over ``num_classes`` classes."""
        if self.entropy is not None:
            return smoothing_for_entropy(self.entropy, num_classes)
        assert self.epsilon is not None
        return self.epsilon

    def apply(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, AugLog]:
        b, k = targets.shape
        mask = self.draw_apply_mask(b, generator)
        eps = self.epsilon_for(k)
        log = {"epsilon": torch.where(mask, eps, 0.0).float(), "applied": mask}
        if not bool(mask.any()) or eps == 0.0:
            return images, targets, log
        smoothed = targets * (1.0 - eps) + eps / k
        out = torch.where(mask.to(targets.device)[:, None], smoothed, targets)
        return images, out, log
