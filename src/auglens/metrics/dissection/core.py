"""`dissect`: capture the layer's activations (two streamed passes over the probe set) and count
its units' overlap with every concept."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...data.base import CONCEPT_CATEGORIES
from ...errors import AuglensError
from ...models.registry import default_target_layer, get_module
from ...models.tap import LayerTap, feature_grid, model_device, model_dtype, preserved_state
from ...models.vit import token_grid
from .counting import (
    _Counter,
    _overlapping_layers,
    float32_floor,
    quantile_from_tail,
    tail_size,
)
from .result import DISSECTION_VERSION, DissectionResult, UnionConvention, _check_union


class _StopForward(Exception):
    """Raised by the layer hook to skip the rest of the network once the activations are taken."""


class _LayerTap:
    """Runs the model on normalised batches and returns the target layer's output (B, U, h, w)
    (a transformer's token output as its patch grid, `feature_grid`)."""

    def __init__(self, model: nn.Module, layer: str, stop_early: bool) -> None:
        self.model = model
        self.module = get_module(model, layer)
        self.layer = layer
        self.stop_early = stop_early
        self.out: Tensor | None = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.out is None:  # first call of a module that runs several times
            if not isinstance(output, Tensor):
                raise AuglensError(
                    f"layer '{self.layer}' returns {type(output).__name__}, not a tensor"
                )
            # without an early stop, later in-place ops (e.g. ``out += x``) could change it
            self.out = output if self.stop_early else output.detach().clone()
        if self.stop_early:
            raise _StopForward

    def __call__(self, x: Tensor) -> Tensor:
        self.out = None
        try:
            with LayerTap(self.module, self._hook):
                self.model(x)
        except _StopForward:
            pass
        out = self.out
        self.out = None
        if out is None:
            raise AuglensError(f"layer '{self.layer}' was not called by the model's forward")
        if out.ndim == 3 and token_grid(self.model) is not None:
            out = feature_grid(self.model, out, self.layer)  # a ViT's tokens: units = channels
        if out.ndim != 4:
            raise AuglensError(
                f"layer '{self.layer}' output must be (B, units, h, w), got {tuple(out.shape)}"
            )
        out = out.detach().float()
        if not bool(torch.isfinite(out).all()):
            raise AuglensError(f"layer '{self.layer}' activations contain NaN or inf")
        return out


def _check_inputs(
    images: Tensor,
    concepts: Tensor,
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
    quantile: float,
    iou_threshold: float,
    batch_size: int,
) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.dtype != torch.uint8:
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else images
        raise AuglensError(f"dissect expects uint8 images (N, 3, H, W), got {desc}")
    if (
        not isinstance(concepts, Tensor)
        or concepts.ndim != 4
        or concepts.is_floating_point()
        or concepts.dtype == torch.bool
    ):
        desc = (
            f"{concepts.dtype} {tuple(concepts.shape)}"
            if isinstance(concepts, Tensor)
            else concepts
        )
        raise AuglensError(f"dissect expects integer concepts (N, layers, H, W), got {desc}")
    n = images.shape[0]
    if n == 0 or concepts.shape[0] != n:
        raise AuglensError(
            f"need the same non-zero number of images and concept maps, got {n} and "
            f"{concepts.shape[0]}"
        )
    c = len(concept_names)
    if c < 2 or len(concept_categories) != c:
        raise AuglensError(
            f"need concept_names and concept_categories for every global id incl. 0 "
            f"(unlabelled) and at least one concept; got {c} names, "
            f"{len(concept_categories)} categories"
        )
    lo, hi = int(concepts.min()), int(concepts.max())
    if lo < 0 or hi >= c:
        raise AuglensError(f"concept ids must be in [0, {c - 1}], got values in [{lo}, {hi}]")
    for what, v in (("quantile", quantile), ("iou_threshold", iou_threshold)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            raise AuglensError(f"{what} must be a number in [0, 1], got {v!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AuglensError(f"batch_size must be an integer >= 1, got {batch_size!r}")




def dissect(
    model: nn.Module,
    images: Tensor,
    concepts: Tensor,
    normalize: Callable[[Tensor], Tensor],
    concept_names: Sequence[str],
    concept_categories: Sequence[str],
    layer: str | None = None,
    batch_size: int = 256,
    iou_threshold: float = 0.04,
    quantile: float = 0.995,
    *,
    union: UnionConvention = "category",
    activation_cache_bytes: int = 1 << 30,
    chunk_elems: int = 1 << 23,
    stop_early: bool = True,
    channels_last: bool | None = None,
) -> DissectionResult:
    """Network Dissection of ``layer`` (None: the model's default target layer) on a probe set.

    images uint8 (N, 3, H, W) → ``normalize(images / 255)`` → model (eval mode, no grad, the
    model's device; state, flags and hooks restored afterwards, also on errors). concepts integer
    (N, L, H', W') global concept ids (0 = unlabelled), labels at resolution H'×W';
    ``concept_names[i]`` / ``concept_categories[i]`` describe id i. Two streamed passes of
    ``batch_size`` images; pass 1 keeps the activations for pass 2 if they take at most
    ``activation_cache_bytes`` (else a second forward). ``chunk_elems`` bounds the upsampled
    elements held at once. ``stop_early`` ends each forward at ``layer`` (its first call).
    ``channels_last`` (None: on CPU) feeds channels-last input (faster with oneDNN).
    """
    _check_inputs(
        images, concepts, concept_names, concept_categories, quantile, iou_threshold, batch_size
    )
    union = _check_union(union)
    layer = default_target_layer(model) if layer is None else layer
    names, cats = list(concept_names), list(concept_categories)
    categories = [g for g in CONCEPT_CATEGORIES if g in cats[1:]]
    categories += sorted({g for g in cats[1:] if g not in categories})
    device = model_device(model)
    dtype = model_dtype(model)
    use_cl = device.type == "cpu" if channels_last is None else channels_last
    tap = _LayerTap(model, layer, stop_early)
    n = images.shape[0]
    label_size = (int(concepts.shape[-2]), int(concepts.shape[-1]))

    def forward(sl: slice) -> Tensor:
        x = normalize(images[sl].to(device, non_blocking=True).to(dtype).div_(255))
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        return tap(x)

    t0, c0 = time.perf_counter(), time.process_time()
    with preserved_state(model), torch.inference_mode():
        cached: list[Tensor] | None = []
        top: Tensor | None = None
        m = n_units = 0
        feat: tuple[int, int] = (0, 0)
        for start in range(0, n, batch_size):
            a = forward(slice(start, start + batch_size))
            if top is None:
                n_units, feat = a.shape[1], (a.shape[2], a.shape[3])
                total = n * feat[0] * feat[1]
                m = tail_size(total, quantile)
                if n * n_units * feat[0] * feat[1] * 4 > activation_cache_bytes:
                    cached = None
                top = a.new_empty(n_units, 0)
            elif a.shape[1:] != (n_units, *feat):
                raise AuglensError(
                    f"layer '{layer}' output shape changed between batches: "
                    f"{tuple(a.shape[1:])} vs {(n_units, *feat)}"
                )
            vals = torch.cat([top, a.transpose(0, 1).reshape(n_units, -1)], 1)
            top = vals.topk(m, 1, sorted=False).values if vals.shape[1] > m else vals
            if cached is not None:
                cached.append(a)
        assert top is not None
        thresholds = quantile_from_tail(top, n * feat[0] * feat[1], quantile).cpu()
        t32 = float32_floor(thresholds)
        t1, c1 = time.perf_counter(), time.process_time()

        pairs = _overlapping_layers(concepts, len(names))
        counter = _Counter(t32, cats, categories, label_size, pairs, device, chunk_elems)
        for i, start in enumerate(range(0, n, batch_size)):
            sl = slice(start, start + batch_size)
            a = cached[i] if cached is not None else forward(sl)
            counter.add(a, concepts[sl])
            if cached is not None:
                cached[i] = a.new_empty(0)  # free as we go
    t2, c2 = time.perf_counter(), time.process_time()
    info = {
        "version": DISSECTION_VERSION,
        "n_images": n,
        "n_units": n_units,
        "feature_size": list(feat),
        "label_size": list(label_size),
        "forward_passes": 1 if cached is not None else 2,
        "activations_cached": cached is not None,
        "active_map_fraction": counter.n_active / max(counter.n_maps, 1),
        "seconds_pass1": t1 - t0,
        "seconds_pass2": t2 - t1,
        "cpu_seconds_pass1": c1 - c0,
        "cpu_seconds_pass2": c2 - c1,
        "batch_size": batch_size,
        "device": str(device),
    }
    inter = counter.inter.view(n_units, len(names)).cpu().clone()  # clone: no inference tensors
    inter[:, 0] = 0
    return DissectionResult(
        layer=layer,
        quantile=float(quantile),
        iou_threshold=float(iou_threshold),
        union=union,
        thresholds=thresholds.clone(),
        intersection=inter,
        label_pixels=counter.label_px.cpu().clone(),
        unit_pixels=counter.unit_px.cpu().clone(),
        unit_pixels_by_category=counter.unit_cat.cpu().clone(),
        unit_pixels_touching=counter.unit_touch.cpu().clone(),
        concept_names=names,
        concept_categories=cats,
        categories=categories,
        info=info,
    )


