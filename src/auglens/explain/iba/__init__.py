"""IBA: per-sample Information Bottleneck attribution (Schulz et al., ICLR 2020, SPEC §2).

Follows ``BioroboticsLab/IBA`` (``IBA/pytorch.py``, ``IBA.analyze``) with these conventions:

- **Bottleneck** after the target layer with output R (C, h, w):
  Z = λ·R + (1 − λ)·ε, ε ~ N(μ, σ) per element, λ = smooth(sigmoid(α)), α (C, h, w) per image
  initialised to ``init_alpha`` = 5. μ, σ are the per-location mean and std of R over
  un-augmented training images of **the same model** (`fit_estimator`); σ is clamped below at
  ``min_std`` = 0.01. As in the reference, only *active* locations (non-zero in more than
  ``active_threshold`` = 1 % of the estimator's samples) pass: Z and the capacity are multiplied by
  that 0/1 mask (a never-firing ReLU unit carries no information).
- **Smoothing**: a fixed 2-D Gaussian (σ = ``smooth_sigma``) applied per channel, kernel size
  ``int(round(2σ))·2 + 1`` (5 for σ = 1, the reference's ``_SpatialGaussianKernel``), reflection
  padding; computed as two 1-D passes (the kernel is separable), which also works for maps
  smaller than the kernel (repeated reflection) where the reference's padding would fail;
  ``smooth_sigma=0`` disables it.
  1 − λ is computed as smooth(sigmoid(−α)) — equal to 1 − smooth(sigmoid(α)) since the kernel
  sums to 1, but without the cancellation that turns log(1 − λ) into −inf for large α.
- **Capacity** (nats, per element), on normalised activations r = (R − μ)/σ:
  KL(N(λr, (1 − λ)²) ‖ N(0, 1)) = −½·(1 + log (1 − λ)² − (λr)² − (1 − λ)²).
- **Loss** per image = mean over the ``batch_noise`` = 10 noisy copies of CE(logits(Z), target)
  + β · mean over (C, h, w) of the capacity, β = 10; Adam (lr 1, default betas/eps) on α only,
  ``steps`` = 10, model in eval mode, parameters frozen (no parameter gradients).
- **Saliency** (``Explanation.maps``, (B, h, w), float32, **bits**, ≥ 0): the capacity summed
  over channels, divided by ln 2, at feature resolution (the reference's
  ``to_saliency_map(capacity, shape=None)``; its input-resolution variant also rescales by
  h·w/(H·W) so that the total number of bits is kept). ``saliency_from="last_step"`` (default,
  as the reference) takes the capacity of the last optimisation step, i.e. of α after
  ``steps − 1`` Adam updates; ``"final"`` recomputes it from α after the last update.

Token layers (ViT, a model with a `TokenGrid` in ``cam_reshape``): R is the layer's patch grid
(`feature_grid`: class token dropped, (B, D, h, w)); Z replaces the patch tokens and the class
token keeps its clean value, in the fx head and in the full forward alike.

Batching (not in the reference, which explains one image per call): α is (B, C, h, w), the
noisy copies form one (B·n) batch, the per-image losses are **summed**, so each image's α gets
exactly the gradient it would get alone and Adam (element-wise) takes the same steps.
Noise: with an integer ``seed`` every image of every call uses the same standard-normal draws
(one CPU generator seeded with ``seed``, (n, C, h, w) per step, scaled by each model's σ, μ):
an image's map depends only on the image, the model and the seed — not on its batch, its
position or ``batch_size`` — and the draws are common random numbers across models.
``seed=None`` draws fresh independent noise per image from torch's global RNG (reference-like,
not reproducible).

Speed: R is computed once (clean forward, which also gives the logits and the predicted
targets); each step then runs only the network *after* the layer (``head_only=True``: a torch.fx
split of the model at the layer, used when the model traces and the part after the layer needs
nothing from before it except R, and checked to reproduce the clean logits from R). Otherwise,
each step runs the whole model on the repeated input with a forward hook that replaces the
layer's output by Z (the part before the layer runs without autograd graph). Both give the same
maps. Memory grows with B · ``batch_noise`` (× 2 with ground-truth maps, which are optimised in
the same batch).
"""

from .bottleneck import (
    bottleneck_lambda,
    capacity_nats,
    gaussian_kernel,
    gaussian_kernel_size,
    smooth,
    smoothing_matrix,
)
from .estimator import (
    ESTIMATOR_FORMAT,
    LN2,
    Estimator,
    IBAEstimator,
    fit_estimator,
    model_fingerprint,
)
from .explainer import IBA
from .head import split_head

__all__ = [
    "ESTIMATOR_FORMAT",
    "Estimator",
    "IBA",
    "IBAEstimator",
    "LN2",
    "bottleneck_lambda",
    "capacity_nats",
    "fit_estimator",
    "gaussian_kernel",
    "gaussian_kernel_size",
    "model_fingerprint",
    "smooth",
    "smoothing_matrix",
    "split_head",
]
