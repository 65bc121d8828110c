"""How soft the labels of a mixing augmentation are, and the label smoothing that is as soft.

The label-mixing study (``presets/label-mixing.yaml``) compares each image-mixing method with
mixed labels, with hard labels, and with hard labels smoothed to the *same mean entropy* as its
mixed labels, so that "soft labels" and "labels that name two classes" can be told apart.

A Beta mixing (mixup, CutMix, SaliencyMix, …) with apply probability ``p`` and λ ~ Beta(α, α)
gives a sample the target λ·y + (1 − λ)·y_partner. Its entropy is the binary entropy h(λ) =
−λ ln λ − (1 − λ) ln(1 − λ) when the partner is of another class, and 0 when it is of the same
class (or the sample is not mixed). Hence, in nats,

    E[H] = p · (1 − q) · E[h(λ)],   E[h(λ)] = ψ(2α + 1) − ψ(α + 1)

(ψ the digamma function; from E[λ ln λ] = ½ (ψ(α + 1) − ψ(2α + 1)) for λ ~ Beta(α, α); α = 1
gives ½). ``q`` is the probability that the partner has the same class. The partner is a uniform
draw from a random permutation of the batch (the sample itself included); with K balanced classes
and the other B − 1 labels of the batch independent and uniform, q = 1/B + (1 − 1/B)/K (q = 1/K
for an infinite batch). Label smoothing with ε gives every target the entropy
`auglens.augment.labels.smoothed_entropy`; `matched_smoothing` solves for the ε of equal mean.

Assumptions, stated where they matter: λ is the drawn Beta value. CutMix and SaliencyMix replace it
by the exact unpasted area of the floored and clipped box, so their realised entropy differs;
`realised_mixed_entropy` measures it by running the augmentation (32×32 noise images, batch 64,
K = 10, p = 0.5, α = 1: mixup 0.221, CutMix 0.228, SaliencyMix 0.247 nats vs 0.2215 expected).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import digamma, xlogy

from .compose import build_augmentation
from .labels import label_entropy, smoothing_for_entropy


def binary_entropy(lam: np.ndarray | float) -> np.ndarray:
    """h(λ) = −λ ln λ − (1 − λ) ln(1 − λ) in nats (0 at λ ∈ {0, 1}), elementwise."""
    lam = np.asarray(lam, dtype=np.float64)
    return -xlogy(lam, lam) - xlogy(1.0 - lam, 1.0 - lam)


def expected_binary_entropy(alpha: float) -> float:
    """E[h(λ)] for λ ~ Beta(α, α), in nats: ψ(2α + 1) − ψ(α + 1) (→ 0 as α → 0, → ln 2 as
    α → ∞)."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return float(digamma(2 * alpha + 1) - digamma(alpha + 1))


def same_class_probability(num_classes: int, batch_size: int | None = None) -> float:
    """Probability that a sample's mixing partner has its class: 1/B + (1 − 1/B)/K for a uniform
    partner in a batch of B (itself included) whose other labels are independent and uniform over
    K classes; 1/K when ``batch_size`` is None (an infinite batch)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if batch_size is None:
        return 1.0 / num_classes
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return 1.0 / batch_size + (1.0 - 1.0 / batch_size) / num_classes


def expected_mixed_entropy(alpha: float, p: float, num_classes: int,
                           batch_size: int | None = None) -> float:
    """Mean entropy in nats of the targets of a Beta(α, α) mixing applied with probability ``p``:
    p · (1 − q) · E[h(λ)] (module docstring; q = `same_class_probability`)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    q = same_class_probability(num_classes, batch_size)
    return p * (1.0 - q) * expected_binary_entropy(alpha)


def matched_smoothing(alpha: float, p: float, num_classes: int,
                      batch_size: int | None = None) -> tuple[float, float]:
    """(entropy, ε): the mean entropy of the mixing's targets (`expected_mixed_entropy`) and the
    label-smoothing ε whose smoothed one-hot targets over ``num_classes`` classes have that
    entropy (`auglens.augment.labels.smoothing_for_entropy`)."""
    h = expected_mixed_entropy(alpha, p, num_classes, batch_size)
    return h, smoothing_for_entropy(h, num_classes)


def realised_mixed_entropy(spec: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                           num_classes: int, image_size: int = 32, batch_size: int = 64,
                           n_batches: int = 200, seed: int = 0) -> float:
    """Mean target entropy (nats) that the augmentation ``spec`` actually produces: run on
    ``n_batches`` batches of uniform-noise images with labels drawn uniformly over
    ``num_classes`` classes (a Monte-Carlo check of `expected_mixed_entropy`, and the realised
    value for box mixings whose λ is the clipped box area)."""
    aug = build_augmentation(spec if isinstance(spec, Sequence) else [spec])
    aug.set_dataset_stats([0.5] * 3, [0.25] * 3)
    gen = torch.Generator().manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)
    total, count = 0.0, 0
    for _ in range(n_batches):
        images = torch.rand(batch_size, 3, image_size, image_size, generator=data)
        labels = torch.randint(num_classes, (batch_size,), generator=data)
        targets = torch.nn.functional.one_hot(labels, num_classes).float()
        _, out, _ = aug(images, targets, gen)
        h = label_entropy(out)
        total += float(h.sum())
        count += h.numel()
    return total / count if count else math.nan
