"""IBA's per-model activation statistics: the estimator, fitted on un-augmented training
images, saved and loaded (tied to the exact weights it was fitted on)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ...errors import AuglensError
from ...models.registry import default_target_layer, get_module
from ...models.tap import LayerTap
from ..base import (
    feature_grid,
    model_device,
    preserved_state,
)

#: format version written into the safetensors metadata of an `Estimator`

ESTIMATOR_FORMAT = "auglens-iba-estimator/1"
LN2 = math.log(2.0)





def model_fingerprint(model: nn.Module) -> str:
    """The weights identity of ``model`` (`auglens.models.weights_fingerprint`: equals the sha256
    of its saved weights file): ties an estimator to the exact weights it was fitted on."""
    from ...models import weights_fingerprint

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
        from ...rundir import write_tensors

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


