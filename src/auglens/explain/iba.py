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

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AuglensError
from ..models.registry import default_target_layer, get_module
from ..models.tap import LayerTap
from ..models.vit import TokenGrid, token_grid
from ..utils import gaussian_taps
from .base import (
    Explainer,
    feature_grid,
    model_device,
    preserved_state,
    register_explainer,
    resolve_targets,
)

#: format version written into the safetensors metadata of an `Estimator`
ESTIMATOR_FORMAT = "auglens-iba-estimator/1"
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------ estimator


def model_fingerprint(model: nn.Module) -> str:
    """The weights identity of ``model`` (`auglens.models.weights_fingerprint`: equals the sha256
    of its saved weights file): ties an estimator to the exact weights it was fitted on."""
    from ..models import weights_fingerprint

    return weights_fingerprint(model)


@dataclass(frozen=True, eq=False)
class Estimator:
    """Fitted per-location statistics of one layer of one model (the IBA noise distribution).

    mean:      float32 (C, h, w), mean of the layer's activations.
    std:       float32 (C, h, w), unbiased std (n − 1), **not** clamped (see `clamped_std`).
    nonzero:   int64 (C, h, w), number of samples with a non-zero activation.
    layer:     dotted name of the layer.
    n_samples: number of images the statistics were computed on.
    model_fingerprint: `model_fingerprint` of the model ("" if unknown).
    """

    mean: Tensor
    std: Tensor
    nonzero: Tensor
    layer: str
    n_samples: int
    model_fingerprint: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mean.shape)  # type: ignore[return-value]

    def clamped_std(self, min_std: float = 0.01) -> Tensor:
        """max(std, min_std), float32 (C, h, w) — the σ the bottleneck uses."""
        return self.std.clamp_min(min_std)

    def active(self, threshold: float = 0.01) -> Tensor:
        """float32 (C, h, w) 0/1 mask: non-zero in more than ``threshold`` of the samples."""
        return (self.nonzero.double() / self.n_samples > threshold).float()

    def save(self, path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
        """Write a safetensors file (atomically) with tensors ``mean``, ``std``, ``nonzero`` and
        metadata ``format``, ``layer``, ``n_samples``, ``model_fingerprint`` (+ ``metadata``)."""
        from ..rundir import write_tensors

        path = Path(path)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update(
            format=ESTIMATOR_FORMAT,
            layer=self.layer,
            n_samples=str(self.n_samples),
            model_fingerprint=self.model_fingerprint,
        )
        tensors = {
            "mean": self.mean.detach().cpu().float().contiguous(),
            "std": self.std.detach().cpu().float().contiguous(),
            "nonzero": self.nonzero.detach().cpu().long().contiguous(),
        }
        return write_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> Estimator:
        """Read a file written by `save`; a missing, corrupt or foreign file is a clear error."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise AuglensError(f"IBA estimator file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise AuglensError(f"corrupt IBA estimator file {path}: {e}") from e
        if meta.get("format") != ESTIMATOR_FORMAT or set(tensors) != {"mean", "std", "nonzero"}:
            raise AuglensError(
                f"{path} is not an IBA estimator file (format {meta.get('format')!r}, "
                f"tensors {sorted(tensors)}); write one with Estimator.save"
            )
        return cls(
            mean=tensors["mean"],
            std=tensors["std"],
            nonzero=tensors["nonzero"],
            layer=meta["layer"],
            n_samples=int(meta["n_samples"]),
            model_fingerprint=meta.get("model_fingerprint", ""),
        )


class IBAEstimator:
    """Running per-location mean / variance of activations (B, C, h, w), merged batch by batch
    in float64 (Chan et al.'s parallel form of Welford's algorithm); `compute` → `Estimator`."""

    def __init__(self, layer: str = "", model_fingerprint: str = "") -> None:
        self.layer = layer
        self.model_fingerprint = model_fingerprint
        self.n = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None
        self._nonzero: Tensor | None = None

    def update(self, acts: Tensor) -> None:
        """Add a batch of activations (B, C, h, w) (any float dtype/device; kept on its device)."""
        if acts.ndim != 4:
            raise AuglensError(
                f"IBA estimator expects activations (B, C, h, w), got {tuple(acts.shape)}"
            )
        a = acts.detach().double()
        b = a.shape[0]
        if b == 0:
            return
        if self._mean is not None and self._mean.shape != a.shape[1:]:
            raise AuglensError(
                f"activation shape {tuple(a.shape[1:])} differs from the earlier batches' "
                f"{tuple(self._mean.shape)} (all images must have the same size)"
            )
        mean_b = a.mean(0)
        m2_b = ((a - mean_b) ** 2).sum(0)
        nz_b = (a != 0).sum(0)
        if self._mean is None:
            self._mean, self._m2, self._nonzero, self.n = mean_b, m2_b, nz_b, b
            return
        n = self.n + b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (b / n)
        self._m2 = self._m2 + m2_b + delta**2 * (self.n * b / n)
        self._nonzero = self._nonzero + nz_b
        self.n = n

    def compute(self) -> Estimator:
        """The `Estimator` (CPU tensors) of everything added so far; needs ≥ 2 samples."""
        if self._mean is None or self.n < 2:
            raise AuglensError(
                f"an IBA estimator needs at least 2 samples to estimate a std, got {self.n}"
            )
        return Estimator(
            mean=self._mean.float().cpu(),
            std=(self._m2 / (self.n - 1)).sqrt().float().cpu(),
            nonzero=self._nonzero.long().cpu().clone(),
            layer=self.layer,
            n_samples=self.n,
            model_fingerprint=self.model_fingerprint,
        )


class _TokenHead:
    """The fx head of a token layer, fed a grid: z → head(tokens with z as the patch tokens).
    The class token comes from the clean pass: ``tokens`` (B, N, D) for a z of B images, else
    repeated as the noisy batch (``reps`` target sets × B images, ``n`` copies each)."""

    def __init__(self, head: fx.GraphModule, grid: TokenGrid, tokens: Tensor, reps: int,
                 n: int) -> None:
        self.head, self.grid, self.tokens = head, grid, tokens
        self.noisy = tokens.repeat(reps, 1, 1).repeat_interleave(n, 0)

    def __call__(self, z: Tensor) -> Tensor:
        t = self.tokens if z.shape[0] == self.tokens.shape[0] else self.noisy
        return self.head(self.grid.to_tokens(z, t))


class _StopForward(Exception):
    """Raised by a hook to skip the rest of the network once the layer's output is stored."""


def fit_estimator(
    model: nn.Module,
    images: Tensor,
    normalize: Callable[[Tensor], Tensor],
    layer: str | None = None,
    batch_size: int = 256,
    n_images: int | None = None,
    device: torch.device | str | None = None,
) -> Estimator:
    """Per-location mean/std of ``layer``'s output over un-augmented uint8 images (N, 3, H, W),
    fed as ``normalize(images / 255)`` in eval mode (the layers after ``layer`` are not run).

    ``layer`` None: the model's default target layer. ``n_images``: use the first n images only
    (pass a shuffled tensor for a random subset). ``device`` None: the model's device (another
    device runs a copy of the model). The model's state is left unchanged. The reference warns
    below 1000 samples; use at least that many for real models.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.dtype != torch.uint8:
        desc = (
            f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images)
        )
        raise AuglensError(f"fit_estimator expects uint8 images (N, 3, H, W), got {desc}")
    if batch_size < 1:
        raise AuglensError(f"batch_size must be >= 1, got {batch_size}")
    if n_images is not None:
        images = images[:n_images]
    layer_name = default_target_layer(model) if layer is None else layer
    dev = model_device(model) if device is None else torch.device(device)
    net = model
    if dev != model_device(model):
        net = copy.deepcopy(model).to(dev)
    module = get_module(net, layer_name)
    est = IBAEstimator(layer_name, model_fingerprint(model))

    def hook(mod: nn.Module, inputs: object, output: object) -> None:
        est.update(feature_grid(net, output, layer_name))
        raise _StopForward

    with preserved_state(net), torch.inference_mode(), LayerTap(module, hook):
        for start in range(0, images.shape[0], batch_size):
            xb = images[start : start + batch_size].to(dev).float().div_(255)
            n_before = est.n
            try:
                net(normalize(xb))
            except _StopForward:
                pass
            if est.n == n_before:
                raise AuglensError(f"layer '{layer_name}' was not called in the forward pass")
    return est.compute()


# ---------------------------------------------------------------------------- bottleneck math


def gaussian_kernel_size(sigma: float) -> int:
    """The reference's odd kernel size for smoothing σ: ``int(round(2σ))·2 + 1`` (5 for σ = 1)."""
    return int(round(2 * sigma)) * 2 + 1


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """2-D Gaussian (k, k), k = `gaussian_kernel_size`, normalised to sum 1 (as the reference's
    ``_SpatialGaussianKernel``)."""
    g = gaussian_taps(sigma, (gaussian_kernel_size(sigma) - 1) // 2)
    return torch.outer(g, g).to(dtype)  # exp(-(x²+y²)/2σ²) factorises; sums to 1


def _reflect_index(i: int, n: int) -> int:
    """Index of position ``i`` (may lie outside [0, n)) after reflection without repeating the
    edge (torch's / numpy's "reflect"), repeated as often as needed; 0 for n = 1."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = i % period
    return i if i < n else period - i


def smoothing_matrix(n: int, sigma: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """A new (n, n) matrix S with (S v)_i = Σ_j g_j · v[reflect(i + j − p)] for the reference's 1-D
    Gaussian g (length k = `gaussian_kernel_size`, p = (k − 1)/2, normalised to sum 1)."""
    k = gaussian_kernel_size(sigma)
    p = (k - 1) // 2
    g = gaussian_taps(sigma, p).tolist()
    rows = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(k):
            rows[i][_reflect_index(i + j - p, n)] += g[j]
    return torch.tensor(rows, dtype=torch.float64).to(dtype)


@functools.lru_cache(maxsize=64)
def _smoothing_matrix_cached(n: int, sigma: float) -> Tensor:
    return smoothing_matrix(n, sigma)


def smooth(t: Tensor, sigma: float) -> Tensor:
    """Per-channel Gaussian smoothing of (B, C, h, w) with reflection padding: the reference's
    2-D kernel (`gaussian_kernel`, reflection-padded depthwise convolution) applied as the two
    1-D passes it factorises into, S_h · t · S_wᵀ (`smoothing_matrix`; equal up to float
    rounding, and defined for maps smaller than the kernel). σ ≤ 0 returns ``t``."""
    if sigma <= 0:
        return t
    sh = _smoothing_matrix_cached(t.shape[-2], float(sigma)).to(t.device, t.dtype)
    sw = _smoothing_matrix_cached(t.shape[-1], float(sigma)).to(t.device, t.dtype)
    return sh @ t @ sw.T


def capacity_nats(r_norm: Tensor, lam: Tensor, one_minus_lam: Tensor | None = None) -> Tensor:
    """Element-wise KL(N(λ·r, (1 − λ)²) ‖ N(0, 1)) in nats for normalised activations r:
    −½·(1 + log(1 − λ)² − (λr)² − (1 − λ)²). ``one_minus_lam`` (default 1 − λ) may be given
    more accurately than by the subtraction."""
    om = 1 - lam if one_minus_lam is None else one_minus_lam
    mu = r_norm * lam
    var = om * om
    return -0.5 * (1 + 2 * torch.log(om) - mu * mu - var)


def bottleneck_lambda(alpha: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """(λ, 1 − λ), both (B, C, h, w): smooth(sigmoid(α)) and smooth(sigmoid(−α))."""
    b = alpha.shape[0]
    both = smooth(torch.cat([torch.sigmoid(alpha), torch.sigmoid(-alpha)]), sigma)
    return both[:b], both[b:]


# ------------------------------------------------------------------------------ head splitting


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.leaf or super().is_leaf_module(
            m, module_qualified_name
        )


def split_head(model: nn.Module, layer: str) -> fx.GraphModule | None:
    """The part of ``model`` after ``layer`` as a module ``head(z) -> logits`` sharing the
    model's sub-modules, or None when the model does not trace with torch.fx, the layer is not
    called exactly once, or the part after it needs values from before it other than its
    output (e.g. a skip connection around the layer). Trace in the mode the head will run in
    (``self.training`` branches are frozen)."""
    try:
        graph = _LeafTracer(layer).trace(model)
    except Exception:
        return None
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        return None
    layer_node = calls[0]
    dep_x: set[fx.Node] = set()
    dep_layer: set[fx.Node] = {layer_node}
    for n in graph.nodes:
        if n is layer_node:
            continue
        if n.op == "placeholder" or any(a in dep_x for a in n.all_input_nodes):
            dep_x.add(n)
        if any(a in dep_layer for a in n.all_input_nodes):
            dep_layer.add(n)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in dep_layer:
        return None
    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in graph.nodes:
        if n is layer_node:
            env[n] = head.placeholder("z")
        elif n in dep_layer:
            if any(a in dep_x and a not in dep_layer for a in n.all_input_nodes):
                return None  # needs a pre-layer value (skip connection around the layer)
            env[n] = head.node_copy(n, lambda a: env[a])
        elif n not in dep_x:  # constants and parameters (get_attr)
            env[n] = head.node_copy(n, lambda a: env[a])
    try:
        gm = fx.GraphModule(model, head)
        gm.graph.eliminate_dead_code()
        gm.recompile()
    except Exception:
        return None
    return gm


# ------------------------------------------------------------------------------- explainer


@register_explainer("iba")
class IBA(Explainer):
    """Per-sample Information Bottleneck attribution (conventions: module docstring).

    ``IBA(model, target_layer=None, *, estimator=...)``; ``target_layer`` None: the estimator's
    layer. ``estimator``: an `Estimator` (or the path of one saved with `Estimator.save`) fitted
    with `fit_estimator` on un-augmented training images **of this model**; with
    ``check_estimator`` its model fingerprint must match the model's weights.
    Maps: (B, h, w) float32 capacity in bits (≥ 0) at the layer's resolution; logits from a
    clean eval forward; target = predicted class unless given; ground-truth maps come from a
    second optimisation (run in the same batch).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        *,
        estimator: Estimator | str | Path | None = None,
        beta: float = 10.0,
        steps: int = 10,
        lr: float = 1.0,
        batch_noise: int = 10,
        init_alpha: float = 5.0,
        smooth_sigma: float = 1.0,
        min_std: float = 0.01,
        active_threshold: float | None = 0.01,
        seed: int | None = 0,
        saliency_from: Literal["last_step", "final"] = "last_step",
        head_only: bool = True,
        check_estimator: bool = True,
        channels_last: bool | None = None,
    ) -> None:
        if estimator is None:
            raise AuglensError(
                "IBA needs an estimator of the layer's activations for this model: fit one with "
                "auglens.explain.iba.fit_estimator(model, train_images_uint8, normalize) on "
                "un-augmented training images (cache it with Estimator.save next to the "
                "checkpoint) and pass estimator=..."
            )
        if isinstance(estimator, str | Path):
            estimator = Estimator.load(estimator)
        if not isinstance(estimator, Estimator):
            raise AuglensError(
                f"estimator must be an Estimator or a path, got {type(estimator).__name__}"
            )
        if target_layer is None:
            target_layer = estimator.layer or None
        super().__init__(model, target_layer, channels_last=channels_last)
        if estimator.layer and estimator.layer != self.layer_name:
            raise AuglensError(
                f"the IBA estimator was fitted on layer '{estimator.layer}', not on the target "
                f"layer '{self.layer_name}'; fit one for this layer with fit_estimator"
            )
        if check_estimator and estimator.model_fingerprint:
            if model_fingerprint(model) != estimator.model_fingerprint:
                raise AuglensError(
                    "the IBA estimator was fitted on a model with different weights (IBA's "
                    "statistics are per model); fit one for this model with fit_estimator, or "
                    "pass check_estimator=False"
                )
        checks = [
            (steps >= 1, f"steps must be >= 1, got {steps}"),
            (batch_noise >= 1, f"batch_noise must be >= 1, got {batch_noise}"),
            (lr > 0, f"lr must be > 0, got {lr}"),
            (beta >= 0, f"beta must be >= 0, got {beta}"),
            (min_std > 0, f"min_std must be > 0, got {min_std}"),
            (smooth_sigma >= 0, f"smooth_sigma must be >= 0, got {smooth_sigma}"),
            (
                saliency_from in ("last_step", "final"),
                f"saliency_from must be 'last_step' or 'final', got {saliency_from!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise AuglensError(msg)
        self.estimator = estimator
        self.beta = float(beta)
        self.steps = int(steps)
        self.lr = float(lr)
        self.batch_noise = int(batch_noise)
        self.init_alpha = float(init_alpha)
        self.smooth_sigma = float(smooth_sigma)
        self.min_std = float(min_std)
        self.active_threshold = active_threshold
        self.seed = seed
        self.saliency_from = saliency_from
        self.head_only = head_only
        #: how the last call ran the network after the layer: "head" (fx split) or "full"
        self.last_mode: str = ""
        self._tokens: Tensor | None = None  # a token layer's clean output (class token source)
        self._head_cache: tuple[tuple[tuple[str, int], ...], fx.GraphModule | None] | None = None

    def _explain(
        self, x: Tensor, target: Tensor | None, target_gt: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        with torch.inference_mode(False), torch.enable_grad():
            r, logits = self._clean_pass(x)
            targets = resolve_targets(logits, target)
            b = x.shape[0]
            tg = targets
            if target_gt is not None:
                target_gt = resolve_targets(logits, target_gt, "ground-truth")
                tg = torch.cat([targets, target_gt])
            run = self._runner(x, r, logits, tg.shape[0] // b)
            sal = self._optimise(r.repeat(tg.shape[0] // b, 1, 1, 1), tg, run)
        maps_gt = sal[b:] if target_gt is not None else None
        return sal[:b], logits, targets, maps_gt

    # ---- passes

    def _clean_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One eval forward: the layer's output R (B, C, h, w) (a token layer's as its grid,
        `feature_grid`; its tokens kept in ``self._tokens``) and the logits (B, K)."""
        store: dict[str, Tensor] = {}
        name = self.layer_name

        def hook(module: nn.Module, inputs: object, output: object) -> None:
            out = feature_grid(self.model, output, name)
            if "r" in store:
                raise AuglensError(
                    f"IBA layer '{name}' is called more than once per forward pass "
                    "(a shared module); choose a layer that runs once"
                )
            store["r"] = out.detach().clone()  # later in-place ops must not change R
            if out is not output:
                store["tokens"] = output.detach().clone()

        with torch.no_grad(), LayerTap(self.layer, hook):
            logits = self.model(x)
        if "r" not in store:
            raise AuglensError(f"IBA layer '{name}' was not called in the forward pass")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            desc = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise AuglensError(f"model output must be logits (B, K), got {desc}")
        r = store["r"]
        self._tokens = store.get("tokens")
        if tuple(r.shape[1:]) != self.estimator.shape:
            raise AuglensError(
                f"layer '{name}' outputs {tuple(r.shape[1:])} per image but the IBA estimator "
                f"holds {self.estimator.shape}: fit it on images of the same size"
            )
        return r, logits

    def _runner(
        self, x: Tensor, r: Tensor, logits: Tensor, reps: int
    ) -> Callable[[Tensor], Tensor]:
        """A function z (reps·B·n, C, h, w) → logits running the network after the layer."""
        if self.head_only:
            head = self._split_head()
            if head is not None and self._tokens is not None:
                grid = token_grid(self.model)
                assert grid is not None
                head = _TokenHead(head, grid, self._tokens, reps, self.batch_noise)
            if head is not None:
                with torch.no_grad():
                    check = head(r)
                scale = logits.abs().max().item()
                if (
                    isinstance(check, Tensor)
                    and check.shape == logits.shape
                    and (check - logits).abs().max().item() <= 1e-4 * scale + 1e-6
                ):
                    self.last_mode = "head"
                    return head
                warnings.warn(
                    f"the torch.fx split of {type(self.model).__name__} after "
                    f"'{self.layer_name}' does not reproduce the model's logits; IBA falls back "
                    "to full forward passes (same maps, slower)",
                    stacklevel=4,
                )
        self.last_mode = "full"
        x_rep = x.repeat(reps, 1, 1, 1).repeat_interleave(self.batch_noise, 0)
        cur: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: object, output: object) -> Tensor:
            out = feature_grid(self.model, output, self.layer_name)
            z = cur["z"]
            if out.shape != z.shape:
                raise AuglensError(
                    f"IBA layer '{self.layer_name}' output {tuple(out.shape)} does not match "
                    f"the bottleneck {tuple(z.shape)}"
                )
            return z if out is output else token_grid(self.model).to_tokens(z, output)

        def run(z: Tensor) -> Tensor:
            cur["z"] = z
            try:
                with LayerTap(self.layer, hook):
                    return self.model(x_rep)
            finally:
                cur.clear()

        return run

    def _split_head(self) -> fx.GraphModule | None:
        """`split_head`, cached while the model's module tree is the same objects (the head
        shares them; a changed tree is traced again)."""
        key = tuple((n, id(m)) for n, m in self.model.named_modules())
        if self._head_cache is None or self._head_cache[0] != key:
            self._head_cache = (key, split_head(self.model, self.layer_name))
        return self._head_cache[1]

    # ---- optimisation

    def _optimise(self, r: Tensor, targets: Tensor, run: Callable[[Tensor], Tensor]) -> Tensor:
        """Saliency (B, h, w) in bits for activations r (B, C, h, w) and targets (B,)."""
        est = self.estimator
        dev, dt = r.device, r.dtype
        r = r.contiguous()
        mean = est.mean.to(dev, dt)
        std = est.clamped_std(self.min_std).to(dev, dt)
        if self.active_threshold is None:
            active = torch.ones_like(mean)
        else:
            active = est.active(self.active_threshold).to(dev, dt)
        r_norm = (r - mean) / std
        b, c, h, w = r.shape
        n = self.batch_noise
        t_rep = targets.repeat_interleave(n)
        gen = None if self.seed is None else torch.Generator().manual_seed(int(self.seed))
        alpha = torch.full_like(r, self.init_alpha).requires_grad_()
        opt = torch.optim.Adam([alpha], lr=self.lr)
        cap = None
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            lam, om = bottleneck_lambda(alpha, self.smooth_sigma)
            cap = capacity_nats(r_norm, lam, om) * active
            if gen is not None:
                eps = torch.randn((1, n, c, h, w), generator=gen).to(dev, dt)
            else:
                eps = torch.randn((b, n, c, h, w), device=dev, dtype=dt)
            noise = eps * std + mean
            z = (lam[:, None] * r[:, None] + om[:, None] * noise) * active
            out = run(z.reshape(b * n, c, h, w))
            ce = F.cross_entropy(out, t_rep, reduction="none").view(b, n).mean(1)
            loss = (ce + self.beta * cap.flatten(1).mean(1)).sum()
            loss.backward(inputs=[alpha])
            opt.step()
        with torch.no_grad():
            if self.saliency_from == "final":
                lam, om = bottleneck_lambda(alpha, self.smooth_sigma)
                cap = capacity_nats(r_norm, lam, om) * active
            assert cap is not None
            return cap.detach().sum(1) / LN2
